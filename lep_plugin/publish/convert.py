"""Runs llama.cpp's own ``convert_hf_to_gguf.py`` (in a child process started by ``lep export gguf``).

    python -m lep_plugin.publish.convert LLAMA_CPP_DIR ORIGINAL_TOKENIZER_DIR|- -- CONVERTER ARGS...

The converter is run unchanged, with one exception for LEP models: llama.cpp names a byte-level
pre-tokenizer (``tokenizer.ggml.pre``) by hashing the token ids its tokenizer gives a fixed test text, so
any extended vocabulary is unknown to it, although LEP keeps the original pre-tokenizer. Given the
original tokenizer, the converter's own identification (``get_vocab_base_pre``) is applied to the original
tokenizer instead of the new one; everything else (the vocabulary, merges, special tokens, tensors) is
the converter's work on the model dir.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

IDENTIFIED = "lep: pre-tokenizer identified from the original tokenizer:"


def _model_class(script):
    """The converter class that defines ``get_vocab_base_pre``: in the ``conversion`` package of current
    llama.cpp, or in the script itself in older checkouts."""
    try:
        from conversion import base  # llama.cpp's conversion package

        return base.TextModel
    except ImportError:
        return next(getattr(script, name) for name in ("TextModel", "Model") if hasattr(script, name))


def _identify_from(original_dir: str, script) -> None:
    from transformers import AutoTokenizer

    model_class = _model_class(script)
    identify = model_class.get_vocab_base_pre
    original = AutoTokenizer.from_pretrained(original_dir)

    def from_original(self, tokenizer) -> str:
        name = identify(self, original)
        print(f"{IDENTIFIED} {name}", file=sys.stderr, flush=True)
        return name

    model_class.get_vocab_base_pre = from_original


def main(argv: list[str]) -> None:
    root, original, separator, *converter_args = argv
    if separator != "--":
        raise SystemExit("usage: python -m lep_plugin.publish.convert LLAMA_CPP_DIR ORIGINAL|- -- ARGS...")
    script = Path(root) / "convert_hf_to_gguf.py"
    sys.path.insert(0, str(root))
    sys.argv = [str(script), *converter_args]
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts llama.cpp's own gguf-py first on sys.path
    if original != "-":
        _identify_from(original, module)
    module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
