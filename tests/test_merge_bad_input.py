"""Every bad input of lep-merge: one `error: ...` line, exit code 2, nothing written; and an interrupted
run (Ctrl-C, kill) leaves no output dir."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import build_tiny_model, copy_model, merge_args

from lep_plugin.cli.merge import main


def _fails(capsys, tmp_path: Path, base: Path, instruct: Path, adapted: Path, message: str, *extra: str) -> None:
    out = tmp_path / "out"
    capsys.readouterr()  # only what lep-merge prints counts
    with pytest.raises(SystemExit) as err:
        main(
            ["--base", str(base), "--instruct", str(instruct), "--adapted", str(adapted), "--output", str(out), *extra]
        )
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_device_that_is_not_here(mistral_trio, tmp_path, capsys):
    if torch.cuda.is_available():  # a GPU machine: name one past its last GPU
        device, message = f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"
    else:
        device, message = "cuda", "sees no CUDA GPU"
    _fails(
        capsys, tmp_path, mistral_trio.base, mistral_trio.instruct, mistral_trio.adapted, message, "--device", device
    )


def test_different_architecture(mistral_trio, tied_trio, tmp_path, capsys):
    _fails(capsys, tmp_path, tied_trio.base, mistral_trio.instruct, mistral_trio.adapted, "different architectures")


def test_different_hidden_size(mistral_trio, mistral_tokenizer, tmp_path, capsys):
    narrow = build_tiny_model("mistral", mistral_tokenizer, tmp_path / "narrow", hidden=32)
    _fails(capsys, tmp_path, narrow, mistral_trio.instruct, mistral_trio.adapted, "different hidden sizes")


def test_adapted_rows_do_not_match_its_tokenizer(mistral_trio, tmp_path, capsys):
    adapted = copy_model(mistral_trio.adapted, tmp_path / "adapted")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(mistral_trio.base / f, adapted / f)  # the old 32k tokenizer beside 3k-row embeddings
    _fails(capsys, tmp_path, mistral_trio.base, mistral_trio.instruct, adapted, "rows but its tokenizer")


def test_base_and_instruct_with_different_vocabularies(mistral_trio, tmp_path, capsys):
    instruct = copy_model(mistral_trio.instruct, tmp_path / "instruct")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(mistral_trio.new_tokenizer / f, instruct / f)
    _fails(capsys, tmp_path, mistral_trio.base, instruct, mistral_trio.adapted, "different old vocabularies")


def test_missing_tensor(mistral_trio, tmp_path, capsys):
    base = copy_model(mistral_trio.base, tmp_path / "base")
    index = json.loads((base / "model.safetensors.index.json").read_text())
    del index["weight_map"]["lm_head.weight"]
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(capsys, tmp_path, base, mistral_trio.instruct, mistral_trio.adapted, "has no tensor lm_head.weight")


def test_truncated_shard(mistral_trio, tmp_path, capsys):
    instruct = copy_model(mistral_trio.instruct, tmp_path / "instruct")
    shard = sorted(instruct.glob("model-*.safetensors"))[-1]  # a shard that would only be copied
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    _fails(capsys, tmp_path, mistral_trio.base, instruct, mistral_trio.adapted, "corrupt or truncated")


def test_corrupt_shard_header(mistral_trio, tmp_path, capsys):
    base = copy_model(mistral_trio.base, tmp_path / "base")
    shard = sorted(base.glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as fh:
        fh.seek(8)
        fh.write(b"#garbage#")
    _fails(capsys, tmp_path, base, mistral_trio.instruct, mistral_trio.adapted, "corrupt or truncated")


def test_index_pointing_outside_its_dir(mistral_trio, tmp_path, capsys):
    instruct = copy_model(mistral_trio.instruct, tmp_path / "models" / "instruct")
    shard = sorted(instruct.glob("model-*.safetensors"))[0]
    shutil.copy(shard, tmp_path / "models" / "outside.safetensors")
    index = json.loads((instruct / "model.safetensors.index.json").read_text())
    index["weight_map"] = {
        k: ("../outside.safetensors" if v == shard.name else v) for k, v in index["weight_map"].items()
    }
    (instruct / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(capsys, tmp_path, mistral_trio.base, instruct, mistral_trio.adapted, "outside")


class NotATensor:
    """Stands for arbitrary objects in a pickle: loading it would run code from the file."""

    def __init__(self):
        self.payload = "x"


def test_pickle_that_is_not_plain_tensors(mistral_trio, tmp_path, capsys):
    from safetensors.torch import load_file

    base = tmp_path / "base"
    base.mkdir()
    for f in mistral_trio.base.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, base / f.name)
    state = {}
    for shard in mistral_trio.base.glob("model-*.safetensors"):
        state.update(load_file(str(shard)))
    state["extra"] = NotATensor()
    torch.save(state, base / "pytorch_model.bin")
    _fails(capsys, tmp_path, base, mistral_trio.instruct, mistral_trio.adapted, "not a plain tensor checkpoint")


def test_plain_bin_checkpoint_is_accepted(mistral_trio, tmp_path):
    """The same base as a plain-tensor pytorch_model.bin works (read with weights_only=True)."""
    from safetensors.torch import load_file

    base = tmp_path / "base-bin"
    base.mkdir()
    for f in mistral_trio.base.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, base / f.name)
    state = {}
    for shard in mistral_trio.base.glob("model-*.safetensors"):
        state.update(load_file(str(shard)))
    torch.save(state, base / "pytorch_model.bin")
    out = tmp_path / "out"
    main(
        [
            "--base",
            str(base),
            "--instruct",
            str(mistral_trio.instruct),
            "--adapted",
            str(mistral_trio.adapted),
            "--output",
            str(out),
            "--method",
            "overlap",
        ]
    )
    reference = tmp_path / "reference"
    main(
        [
            *merge_args(mistral_trio, reference),
            "--method",
            "overlap",
        ]
    )
    for shard in reference.glob("*.safetensors"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()


def test_deepspeed_dir_without_latest(mistral_trio, tmp_path, capsys):
    adapted = tmp_path / "ds"
    (adapted / "global_step5").mkdir(parents=True)
    for f in mistral_trio.adapted.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, adapted / f.name)
    _fails(capsys, tmp_path, mistral_trio.base, mistral_trio.instruct, adapted, "without a `latest` file")


def test_output_inside_an_input_is_refused(mistral_trio, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(
            [
                *merge_args(mistral_trio, mistral_trio.instruct),
                "--force",
            ]
        )
    assert err.value.code == 2 and "overlaps the instruct input" in capsys.readouterr().err
    assert (mistral_trio.instruct / "config.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_output(mistral_trio, tmp_path, sig):
    out = tmp_path / "out"
    # Ctrl-C as in a terminal: a job started in the background by a non-interactive shell (as CI may run
    # the suite) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    child = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from lep_plugin.cli.merge import main; main()"
    )
    cmd = [
        sys.executable,
        "-c",
        child,
        *merge_args(mistral_trio, out),
        "--method",
        "all",
        "--block-rows",
        "16",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob(".out.tmp-*")):  # the run is now writing beside OUT
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read() if proc.poll() is not None else "timeout"
        )
        time.sleep(0.01)
    proc.send_signal(sig)  # at once: the whole write of three models is still ahead
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.rstrip().splitlines()[-1] in ("aborted", "interrupted: nothing was written")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- the base the adapted run started from


def _plugin_output(trio, directory: Path, base: Path | None, train: str = "embeddings") -> Path:
    """The trio's adapted model as the plugin leaves it: a manifest with what it trained and, through the
    plugin's own function, the fingerprint of ``base`` (None: a manifest from before fingerprints)."""
    from lep_plugin.checkpoints.fingerprint import base_record

    adapted = copy_model(trio.adapted, directory)
    manifest = json.loads((trio.new_tokenizer / "lep_vocab.json").read_text())
    manifest["plugin"] = {"train": train} | ({"base": base_record(str(base))} if base is not None else {})
    (adapted / "lep_vocab.json").write_text(json.dumps(manifest))
    return adapted


def test_plugin_output_with_the_instruct_model_as_base_is_refused(mistral_trio, tmp_path, capsys):
    adapted = _plugin_output(mistral_trio, tmp_path / "adapted", mistral_trio.base)
    recorded = json.loads((adapted / "lep_vocab.json").read_text())["plugin"]["base"]
    assert recorded["model"] == str(mistral_trio.base) and len(recorded["tensors"]) == 9  # one layer of tiny Mistral
    assert all("embed_tokens" not in n and "lm_head" not in n for n in recorded["tensors"])
    _fails(
        capsys,
        tmp_path,
        mistral_trio.instruct,
        mistral_trio.instruct,
        adapted,
        f"was trained from {mistral_trio.base}, whose transformer layers differ from base {mistral_trio.instruct}'s",
    )


def test_plugin_output_with_its_base_is_merged_without_a_full_comparison(mistral_trio, tmp_path, capsys, monkeypatch):
    from lep_plugin.propagation import plan

    adapted = _plugin_output(mistral_trio, tmp_path / "adapted", mistral_trio.base)
    monkeypatch.setattr(plan, "first_changed_tensor", lambda *_: pytest.fail("the fingerprint made it unneeded"))
    main(
        [
            *merge_args(mistral_trio, tmp_path / "out", adapted=adapted),
            "--dry-run",
        ]
    )
    assert "lep-merge plan" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_base_fingerprint_matches_the_same_weights_in_another_dtype(mistral_trio, tmp_path):
    """Compared in the recorded dtype: a bf16 record matches fp32 weights that round to it (a DeepSpeed fp32
    master of a bf16 model); another model does not match."""
    from lep_plugin.checkpoints.discover import open_checkpoint
    from lep_plugin.checkpoints.fingerprint import first_mismatch, model_fingerprint

    recorded = model_fingerprint(mistral_trio.base)
    rounded = {n: {"dtype": "bfloat16", "sha256": _bf16_digest(mistral_trio.base, n)} for n in recorded}
    assert first_mismatch(open_checkpoint(mistral_trio.base, "base"), rounded, "base") is None
    assert first_mismatch(open_checkpoint(mistral_trio.instruct, "base"), recorded, "base") == sorted(recorded)[0]


def _bf16_digest(model_dir: Path, name: str) -> str:
    from lep_plugin.checkpoints.discover import open_checkpoint
    from lep_plugin.checkpoints.fingerprint import tensor_digest

    return tensor_digest(open_checkpoint(model_dir, "base").get(name).to(torch.bfloat16))


def test_plugin_output_without_fingerprint_gets_the_full_comparison(mistral_trio, tmp_path, capsys):
    adapted = _plugin_output(mistral_trio, tmp_path / "adapted", None)
    _fails(
        capsys,
        tmp_path,
        mistral_trio.instruct,
        mistral_trio.instruct,
        adapted,
        "so the run did not start from this base model",
    )


def test_base_and_instruct_with_the_same_weights_are_named(mistral_trio, tmp_path, capsys):
    main(
        [
            "--base",
            str(mistral_trio.instruct),
            "--instruct",
            str(mistral_trio.instruct),
            "--adapted",
            str(mistral_trio.adapted),
            "--output",
            str(tmp_path / "out"),
            "--no-check-adapted",
            "--dry-run",
        ]
    )
    printed = capsys.readouterr().out
    assert (
        f"WARNING: base {mistral_trio.instruct} and instruct {mistral_trio.instruct} hold the same weights" in printed
    )
    main(
        [
            *merge_args(mistral_trio, tmp_path / "out"),
            "--dry-run",
        ]
    )
    assert "same weights" not in capsys.readouterr().out
