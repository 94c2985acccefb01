"""Learned Embedding Propagation (LEP) for Axolotl.

Layers, from the bottom up:

* ``lep_plugin.math``   – pure tensor functions (the vocabulary operator T, least-squares propagation,
  evaluation metrics); no file or network I/O.
* ``lep_plugin.io``     – tokenizers, corpora, checkpoints (safetensors, DeepSpeed), atomic output dirs.
* ``lep_plugin.plugin`` and ``lep_plugin.cli`` – the faces: the Axolotl plugin and the ``lep`` /
  ``lep-merge`` command lines, thin layers over the two above.

``LEPPlugin`` is imported lazily so that ``lep`` commands do not pay for importing Axolotl.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LEPPlugin":
        from lep_plugin.plugin.plugin import LEPPlugin

        return LEPPlugin
    raise AttributeError(f"module 'lep_plugin' has no attribute {name!r}")
