"""``lep.propagate``: one YAML from a base model to the instruct model to publish.

The README's commands in a dir laid out like a fresh checkout: ``lep tiny`` and ``axolotl train
examples/yaml/tiny-cpu.yml``, whose ``propagate:`` block merges (conversion), evaluates and writes a q8_0 GGUF
when training ends; the same on two CPU ranks under ZeRO-3 (the shared run of conftest.py). The output is
bit-identical to a hand-run ``lep-merge`` of the same training output, its card holds the evaluation table
and llama.cpp's reader (gguf-py) reads the GGUF. A bad block is refused before training; a propagation that
stops leaves the training output as it was and ``lep propagate`` finishes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _plugin_helpers import EXAMPLES, VENV_BIN, lep_lines, load_weights, train_env
from _publish_helpers import check_tokenizer, lep_exit_code, read_gguf
from builders import SHARED_DATA, generate_from_chat

from lep_plugin.cli.merge import main as merge_main
from lep_plugin.common.tokenizers import load_tokenizer, read_manifest
from lep_plugin.errors import LEPExit
from lep_plugin.evaluation.report import at_or_below_chance
from lep_plugin.plugin.plugin import LEPPlugin

pytestmark = pytest.mark.e2e
TINY_YAML = "examples/yaml/tiny-cpu.yml"


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


def _tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and a hash of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh checkout (examples/yaml/tiny-cpu.yml, ../shared beside it) after the README's two commands."""
    root = tmp_path_factory.mktemp("propagate")
    checkout = root / "main"
    (checkout / "examples" / "yaml").mkdir(parents=True)
    shutil.copy(EXAMPLES / "tiny-cpu.yml", checkout / "examples" / "yaml")
    (root / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    tiny = subprocess.run(
        [str(VENV_BIN / "lep"), "tiny", "--family", "mistral", "--output", "out/tiny-mistral"],
        cwd=checkout, env=train_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tiny.returncode == 0, tiny.stderr[-3000:]
    train = subprocess.run(
        [str(VENV_BIN / "axolotl"), "train", TINY_YAML],
        cwd=checkout, env=train_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = train.stdout + train.stderr
    (root / "train.log").write_text(log, encoding="utf-8")
    assert train.returncode == 0, log[-5000:]
    return checkout, log


def _same_weights(a: Path, b: Path) -> None:
    first, second = load_weights(a), load_weights(b)
    assert sorted(first) == sorted(second)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def _assert_published(output: Path, adapted: Path, base: Path, instruct: Path, hand: Path) -> None:
    """``output`` is lep-merge's model of ``adapted`` (bit for bit), with the evaluation in its card and a
    q8_0 GGUF that llama.cpp's reader reads with the model's tokens."""
    merge_main(["--base", str(base), "--instruct", str(instruct), "--adapted", str(adapted), "--output", str(hand)])
    _same_weights(output, hand)
    card = (output / "README.md").read_text(encoding="utf-8")
    evaluation = card.split("## Evaluation", 1)[1]
    assert f"| {output.name} |" in evaluation and f"| {instruct.name} |" in evaluation, evaluation[:800]
    assert (output / "eval.json").is_file() and (output / "eval.png").stat().st_size > 0
    records = json.loads((output / "eval.json").read_text(encoding="utf-8"))["results"]
    assert ("**At or below chance**" in evaluation) == bool(at_or_below_chance(records))  # non-copiers named
    gguf = output / f"{output.name}-q8_0.gguf"
    assert check_tokenizer(read_gguf(gguf), output)["tokens"] >= len(load_tokenizer(output))
    assert not list(output.parent.glob(f".{output.name}*")) and not list(output.parent.glob(".lep-gguf-*"))


def test_one_yaml_trains_and_publishes(checkout, tmp_path):
    root, log = checkout
    out = root / "out"
    assert lep_lines(log, r"training model released\n")  # none left in memory before the merge loads
    stages = [m.group(2) for m in lep_lines(log, r"lep\.propagate (merge|eval|gguf): [0-9.]+ s")]
    assert stages == ["merge", "eval", "gguf"], stages
    done = lep_lines(log, r"lep\.propagate done in [0-9.]+ s: (\S+)")
    assert [m.group(2) for m in done] == ["out/tiny-lep-instruct"]
    assert re.findall(r"\[lep rank \d+\] (.*)", log)[-1] == done[0].group(0).split("] ", 1)[1]  # the last word
    assert read_manifest(out / "tiny-lep")["method"] == "extend"  # the training output, kept
    _assert_published(
        out / "tiny-lep-instruct", out / "tiny-lep", out / "tiny-mistral/base", out / "tiny-mistral/instruct",
        tmp_path / "hand",
    )  # fmt: skip
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(out / "tiny-lep-instruct")
    model = AutoModelForCausalLM.from_pretrained(out / "tiny-lep-instruct", dtype=torch.float32)
    prompt, generated = generate_from_chat(model, tok, "Привет", max_new_tokens=3)
    assert generated.shape[1] == prompt.shape[1] + 3 or tok.eos_token_id in generated[0, prompt.shape[1] :].tolist()


def test_zero3_two_ranks_propagate_on_rank_0(zero3_checkpoint, mistral_trio, tmp_path):
    run = zero3_checkpoint
    # DeepSpeed's closures keep the engine (this rank's partitions): said, not hidden
    assert [m.group(1) for m in lep_lines(run.log, r"note: \d+ training model object\(s\) still referenced")] == ["0"]
    stages = lep_lines(run.log, r"lep\.propagate (merge|eval|gguf): [0-9.]+ s")
    assert [m.group(1) for m in stages] == ["0", "0", "0"], "propagation ran on another rank than 0"
    output = Path(run.config["lep"]["propagate"]["output"])
    _assert_published(output, run.output, run.base_model, mistral_trio.instruct, tmp_path / "hand")


def _yaml_with(root: Path, name: str, **propagate) -> Path:
    cfg = yaml.safe_load((root / TINY_YAML).read_text(encoding="utf-8"))
    cfg["lep"]["propagate"].update(propagate)
    path = root / "examples" / "yaml" / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _register_as_axolotl_train(config: Path, monkeypatch) -> tuple[LEPPlugin, dict]:
    """The plugin's ``register()`` as ``axolotl train CONFIG`` calls it (raw YAML, config path set)."""
    monkeypatch.setattr(sys, "argv", ["axolotl", "train", str(config)])
    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) | {"axolotl_config_path": str(config)}
    plugin = LEPPlugin()
    plugin.register(cfg)
    return plugin, cfg


def test_a_stopped_propagation_keeps_the_run_and_lep_propagate_finishes_it(checkout, monkeypatch, capsys):
    root, _ = checkout
    monkeypatch.chdir(root)
    out, instruct = root / "out", root / "out" / "tiny-mistral" / "instruct"
    config = _yaml_with(root, "again.yml", output="out/again")
    plugin, cfg = _register_as_axolotl_train(config, monkeypatch)  # checked: nothing wrong yet
    trained = _tree(out / "tiny-lep")
    shards = sorted(instruct.glob("*.safetensors"))
    kept = {p: p.read_bytes() for p in shards}
    # the instruct model unreadable when training ends, then llama.cpp's converter missing at the last stage
    shards[0].write_bytes(b"not a safetensors file")
    for failing in ("instruct", "gguf"):
        capsys.readouterr()
        with pytest.raises(LEPExit) as stopped:
            plugin.post_train_unload(cfg)
        assert stopped.value.code == 2
        line = _error_line(capsys)
        assert line.startswith("error: lep.propagate stopped: ") and line.endswith(f"to finish: lep propagate {config}")
        assert ("safetensors" in line) if failing == "instruct" else ("llama.cpp" in line or "LLAMA_CPP_DIR" in line)
        assert _tree(out / "tiny-lep") == trained  # the training output as it was
        assert not (out / "again").exists() and not [p.name for p in out.iterdir() if p.name.startswith(".")]
        for path, data in kept.items():
            path.write_bytes(data)
        monkeypatch.setenv("LLAMA_CPP_DIR", str(root / "no-llama.cpp"))
    monkeypatch.delenv("LLAMA_CPP_DIR")
    capsys.readouterr()
    assert lep_exit_code(["propagate", str(config)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].endswith(": out/again")
    _same_weights(out / "again", out / "tiny-lep-instruct")
    assert (out / "again" / "again-q8_0.gguf").is_file()
    assert lep_exit_code(["propagate", str(config)]) == 2  # done: the output is taken
    assert "already exists" in _error_line(capsys)


def test_lep_check_and_lep_merge_read_the_block(checkout, monkeypatch, capsys):
    root, _ = checkout
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert lep_exit_code(["check", str(_yaml_with(root, "fresh.yml", output="out/fresh"))]) == 0
    said = capsys.readouterr().out
    assert "propagate: conversion into out/fresh from instruct out/tiny-mistral/instruct (mistral)" in said
    assert "then eval on 1 text(s) and GGUF q8_0" in said and "GGUF converter: " in said
    assert lep_exit_code(["check", TINY_YAML]) == 2  # after the run its output is taken
    assert "out/tiny-lep-instruct already exists" in _error_line(capsys)
    assert merge_main([TINY_YAML, "--output", "out/elsewhere", "--dry-run"]) is None
    plan = capsys.readouterr().out
    assert "out/tiny-lep" in plan and "tiny-mistral/instruct" in plan and "conversion" in plan
    assert not (root / "out" / "elsewhere").exists() and not (root / "out" / "fresh").exists()


REFUSALS = {
    "missing": ({"instruct": "out/tiny-mistral/instrct"}, "lep.propagate.instruct out/tiny-mistral/instrct is neither"),
    "architecture": ({"instruct": "{llama}"}, "different architectures (mistral vs llama)"),
    "taken": ({"output": "out/tiny-lep-instruct"}, "output out/tiny-lep-instruct already exists"),
    "inside": ({"output": "{run}/merged"}, "merged overlaps the training output_dir input"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_block_is_refused_before_training(case, checkout, tiny_llama, tmp_path, monkeypatch, capsys):
    root, _ = checkout
    monkeypatch.chdir(root)
    change, message = REFUSALS[case]
    change = {k: v.format(llama=tiny_llama, run=tmp_path / "run") for k, v in change.items()}
    config = _yaml_with(root, f"bad-{case}.yml", **change)
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    cfg["dataset_prepared_path"], cfg["output_dir"] = str(tmp_path / "prepared"), str(tmp_path / "run")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    capsys.readouterr()
    assert lep_exit_code(["check", str(config)]) == 2
    assert message in _error_line(capsys)
    with pytest.raises(LEPExit):
        _register_as_axolotl_train(config, monkeypatch)
    assert message in _error_line(capsys)
    assert not list(tmp_path.iterdir())  # no vocabulary, no output
    # `axolotl inference` / `merge-lora` of a finished run register the same YAML: its output rightly exists
    if case == "taken":
        monkeypatch.setattr(sys, "argv", ["axolotl", "inference", str(config)])
        LEPPlugin().register(yaml.safe_load(config.read_text(encoding="utf-8")))


def test_axolotl_train_refuses_a_taken_output_before_the_first_step(checkout, tmp_path):
    root, _ = checkout
    config = _yaml_with(root, "taken.yml", output="out/tiny-lep-instruct")
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    cfg["dataset_prepared_path"], cfg["output_dir"] = str(tmp_path / "prepared"), str(tmp_path / "run")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "train", str(config)],
        cwd=root, env=train_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "output out/tiny-lep-instruct already exists" in errors[0]
    assert not list(tmp_path.iterdir())
