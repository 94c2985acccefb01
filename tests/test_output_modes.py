"""Outputs are readable like any save_pretrained result: the one atomic-write helper (lep_plugin.common.fs)
gives what it renames into place the mode a plain open()/mkdir() would (the umask honoured), for every
writer that goes through it: eval JSON and plots, vocabulary dirs, GGUF files, model cards. (The model
dirs themselves are checked in test_publish.py.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lep_plugin.common.fs import (
    atomic_file,
    atomic_output_dir,
    current_umask,
    temp_dir,
    write_text_atomic,
)
from lep_plugin.common.plots import pyplot, save_figure
from lep_plugin.publish.card import write_card


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask and current_umask() == umask


def test_files_and_dirs_written_through_the_helper(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    write_text_atomic(tmp_path / "eval.json", json.dumps({"results": []}))  # lep eval --json, vocab report
    fig, ax = pyplot().subplots()
    ax.bar([0, 1], [1.0, 2.0])
    save_figure(fig, tmp_path / "eval.png")  # lep eval --plot
    with atomic_file(tmp_path / "model.gguf") as tmp:  # lep export gguf: the converter writes a new file
        tmp.unlink()
        tmp.write_bytes(b"GGUF")
    assert write_card(tmp_path, "<!-- lep-plugin model card -->\n# card\n")  # README.md
    with atomic_output_dir(tmp_path / "vocab") as tmp:  # lep vocab build / convert, lep-merge, lep tiny
        (tmp / "tokenizer.json").write_text("{}")
        (tmp / "sub").mkdir()
        save_file({"t": torch.zeros(2)}, str(tmp / "sub" / "adapter_model.safetensors"))  # written 0600
    names = ("eval.json", "eval.png", "model.gguf", "README.md", "vocab/tokenizer.json")
    for name in (*names, "vocab/sub/adapter_model.safetensors"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "vocab") == dir_mode and _mode(tmp_path / "vocab" / "sub") == dir_mode
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert _mode(temp_dir(".cache.tmp-", tmp_path)) == dir_mode  # llama.cpp's converter in the cache


def test_a_training_output_is_opened_up_keeping_wider_modes(tmp_path, umask):
    """The plugin's checkpoints and adapter files (the trainer writes safetensors 0600): opened up to what
    the umask allows; a mode already wider (an executable) keeps its bits."""
    from lep_plugin.common.fs import as_if_created_tree

    run = tmp_path / "out"
    (run / "checkpoint-2").mkdir(parents=True)
    save_file({"t": torch.zeros(2)}, str(run / "checkpoint-2" / "model.safetensors"))
    script = run / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    as_if_created_tree(run)
    assert _mode(run / "checkpoint-2" / "model.safetensors") == 0o666 & ~umask
    assert _mode(run / "checkpoint-2") == 0o777 & ~umask
    assert _mode(script) == 0o755 | (0o666 & ~umask)
