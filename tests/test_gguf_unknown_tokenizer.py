"""`lep export gguf` on a model whose byte-level tokenizer llama.cpp cannot name (`lep tiny --family qwen2`'s
rebuilt layout, published by no model): llama.cpp's real converter runs and fails, and the one error line
says whose tokenizer is unknown – the untouched model's, or an LEP model's original too – and what helps,
instead of a hint to pass the original tokenizer that cannot help."""

from __future__ import annotations

import json

import pytest

from lep_plugin.cli.lep import main as lep_main
from lep_plugin.publish.llama_cpp import find_llama_cpp


@pytest.fixture(scope="module")
def llama_cpp():
    """llama.cpp's converter: $LLAMA_CPP_DIR, or the llama-cpp-python sdist fetched once into the cache."""
    return find_llama_cpp()


def _export_error(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        lep_main(["export", "gguf", *args])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_tokenizer_llama_cpp_does_not_know_is_named_with_what_to_do(tiny_families, llama_cpp, tmp_path, capsys):
    base = tiny_families.get("qwen2").base
    out = tmp_path / "qwen.gguf"
    line = _export_error([str(base), "--output", str(out), "--llama-cpp", str(llama_cpp.root)], capsys)
    assert f"does not know the pre-tokenizer of {base} (not an LEP output: no vocabulary change is the cause)" in line
    assert "--original-tokenizer" not in line  # the old hint, which cannot help here
    assert "export a model on a published tokenizer" in line and "--llama-cpp DIR" in line
    assert "add the hash " in line and "get_vocab_base_pre()" in line  # the hash the converter printed, to add

    # an LEP model (its manifest names the original tokenizer) whose original llama.cpp does not know either
    lep_model = tmp_path / "lep-model"
    lep_model.mkdir()
    for item in base.iterdir():
        (lep_model / item.name).symlink_to(item)
    (lep_model / "lep_vocab.json").write_text(json.dumps({"old_tokenizer": str(base)}))
    line = _export_error([str(lep_model), "--output", str(out), "--llama-cpp", str(llama_cpp.root)], capsys)
    assert f"does not know the pre-tokenizer of {lep_model}'s original tokenizer {base} either" in line
    assert "--original-tokenizer" not in line and "--llama-cpp DIR" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lep-model"]  # nothing half-written
