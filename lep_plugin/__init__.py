"""Learned Embedding Propagation (LEP) for Axolotl (Tikhomirov & Chernyshev, arXiv:2412.21140).

One package per capability, over a pure tensor floor:

* ``lep_plugin.math``         – pure tensor functions: the vocabulary operator T, the least-squares
  propagation fit, evaluation metrics; no files, no tokenizers;
* ``lep_plugin.common``       – one rule each for atomic outputs, corpora, text units, tokenizers, ranks;
* ``lep_plugin.checkpoints``  – lazy readers (safetensors, ``.bin``, DeepSpeed ZeRO), the streaming writer
  and what a model config says (embedding names, tying, special ids);
* ``lep_plugin.vocab``        – LEP steps 1–2: build, convert, report and import vocabularies;
* ``lep_plugin.propagation``  – LEP step 4: ``lep-merge``;
* ``lep_plugin.evaluation``   – copy tasks, tokenization statistics, bits per character;
* ``lep_plugin.calibration``  – copy-instruction data for the optional calibration LoRA;
* ``lep_plugin.publish``      – model cards and GGUF export through llama.cpp's own converter;
* ``lep_plugin.plugin`` and ``lep_plugin.cli`` – the faces: the Axolotl plugin (step 3) and the ``lep`` /
  ``lep-merge`` command lines, thin layers over the rooms above; ``lep_plugin.demo`` – ``make demo``.

``LEPPlugin`` is imported lazily so that ``lep`` commands do not pay for importing Axolotl.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LEPPlugin":
        from lep_plugin.plugin.plugin import LEPPlugin  # lazy: importing Axolotl takes seconds (docstring)

        return LEPPlugin
    raise AttributeError(f"module 'lep_plugin' has no attribute {name!r}")
