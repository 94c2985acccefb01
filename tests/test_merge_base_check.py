"""The base check that cannot be skipped, on a real plugin run (the session's ZeRO-3 `axolotl train`, shared
with the plugin and lep-merge tests): its manifests — in the output dir and in each DeepSpeed
``checkpoint-N`` — record the fingerprint of the base model it started from, and `lep-merge` refuses the
instruct model given as ``--base`` in one line, writing nothing."""

from __future__ import annotations

import json

import pytest

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
