"""The base check that cannot be skipped, on a real plugin run (the session's ZeRO-3 `axolotl train`, shared
with the plugin and lep-merge tests): its manifests — in the output dir and in each DeepSpeed
``checkpoint-N`` — record the fingerprint of the base model it started from, and `lep-merge` refuses the
instruct model given as ``--base`` in one line, writing nothing."""

from __future__ import annotations

import json

import pytest
from builders import merge_args

from lep_plugin.checkpoints.discover import open_checkpoint
from lep_plugin.checkpoints.fingerprint import first_mismatch
from lep_plugin.cli.merge import main


@pytest.mark.e2e
def test_plugin_run_records_its_base_and_refuses_another(zero3_checkpoint, mistral_trio, tmp_path, capsys):
    run = zero3_checkpoint
    for adapted in (run.output, run.checkpoint):  # the final save and a DeepSpeed checkpoint-N dir
        recorded = json.loads((adapted / "lep_vocab.json").read_text())["plugin"]["base"]
        assert recorded["model"] == str(run.base_model) and recorded["tensors"]
        assert first_mismatch(open_checkpoint(run.base_model, "base"), recorded["tensors"], "base") is None
        out = tmp_path / f"out-{adapted.name}"
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(
                [
                    "--base",
                    str(mistral_trio.instruct),
                    "--instruct",
                    str(mistral_trio.instruct),
                    "--adapted",
                    str(adapted),
                    "--output",
                    str(out),
                ]
            )
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert done.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(
            f"error: adapted {adapted} was trained from {run.base_model}, whose transformer layers differ"
        )
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))


def test_a_tied_base_for_an_untied_instruct_model_is_refused(tied_trio, mistral_tokenizer, tmp_path, capsys):
    """Llama-3.2's tied base for Llama-3's untied instruct model (the same architecture and hidden size):
    refused in one line."""
    from builders import build_tiny_model

    untied = build_tiny_model("llama", mistral_tokenizer, tmp_path / "untied-instruct", tie=False, seed=3)
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(merge_args(tied_trio, out)[:2] + ["--instruct", str(untied)] + merge_args(tied_trio, out)[4:])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert done.value.code == 2 and len(lines) == 1, lines
    assert "ties its input and output embeddings but instruct" in lines[0]
    assert "not the base this instruct model was tuned from" in lines[0] and not out.exists()


def test_an_unrelated_base_of_the_same_shape_is_warned_on_screen_and_in_the_card(mistral_trio, tmp_path, capsys):
    """A random model of the same shape as --base, the checks turned off: the fit residual is near 1, said on
    screen and at the top of the card."""
    from builders import build_tiny_model

    from lep_plugin.common.tokenizers import load_tokenizer
    from lep_plugin.propagation.fits import UNRELATED_RESIDUAL

    tokenizer = tmp_path / "tok"
    load_tokenizer(mistral_trio.base).save_pretrained(str(tokenizer))
    stranger = build_tiny_model("mistral", tokenizer, tmp_path / "stranger", seed=99)
    out = tmp_path / "out"
    capsys.readouterr()
    main(["--base", str(stranger), *merge_args(mistral_trio, out)[2:], "--no-check-adapted"])
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: the fit residual")]
    assert len(warnings) == 1 and "is --base the model the instruct model was tuned from?" in warnings[0]
    report = json.loads((out / "lep_merge.json").read_text())
    assert report["warnings"] == warnings
    residual = report["fits"]["input"]["residual_on_conversion"]
    assert residual >= UNRELATED_RESIDUAL
    card = (out / "README.md").read_text()
    head = card.split("## ", 1)[0]
    assert "> **Warning**: the fit residual is" in head
    # the right base: no warning
    capsys.readouterr()
    main([*merge_args(mistral_trio, tmp_path / "right")])
    assert "warning: the fit residual" not in capsys.readouterr().out
