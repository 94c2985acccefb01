"""Helpers for the plugin tests: tiny YAMLs derived from examples/yaml/tiny-cpu.yml, real ``axolotl train``
subprocesses, safetensors comparison, and the reusable ZeRO-3 checkpoint recipe.

:func:`make_zero3_checkpoint` (behind the session fixture ``zero3_checkpoint`` of conftest.py, shared by the
plugin and lep-merge tests) runs ``axolotl train`` with the plugin under DeepSpeed ZeRO-3 on CPU and
on two ranks and returns a :class:`Zero3Run` whose ``checkpoint`` dir holds
``global_stepN/`` (DeepSpeed model/optimizer states), ``latest``, the HF files and the new tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from builders import RU_HELDOUT, RU_TRAIN, write_corpus_slice
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "yaml"
VENV_BIN = Path(sys.executable).parent
TRAIN_TIMEOUT = 420
# how users launch several processes on one machine; --standalone rendezvouses on a free port (plain torchrun
# takes 29500, which two pytest-xdist workers launching ranks at the same moment would both bind)
TWO_RANKS = ["--launcher", "torchrun", "--", "--standalone", "--nproc_per_node", "2"]


def worker_port(port: int) -> int:
    """A fixed rendezvous port moved into this pytest-xdist worker's own range: ``port`` itself outside
    xdist and on worker gw0, ``port + 1000`` on gw1, and so on. The one rule for every port the tests launch
    ranks on, so that two workers (`make test` runs two) never bind the same port at the same moment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return port + 1000 * int(worker.removeprefix("gw") or 0)


def worker_threads() -> int:
    """Threads a test process computes on: in a pytest-xdist worker its share of the cores (1 for `make test`'s
    two workers on two cores; conftest.py sets it as ``OMP_NUM_THREADS`` for the subprocesses too), else 2.
    More threads than cores wait on each other's descheduled threads: test_eval.py's copier, trained on 2
    threads in 36 s alone, did not finish in 900 s beside a second worker."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 1:
        return 2
    return max(1, len(os.sched_getaffinity(0)) // workers)


def train_env() -> dict[str, str]:
    """Environment of an ``axolotl train`` subprocess: offline, no telemetry, this repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # axolotl launches `accelerate` by name
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1")
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def tiny_config(work: Path, base_model: Path, dataset: Path, **overrides) -> dict:
    """examples/yaml/tiny-cpu.yml with absolute paths under ``work`` (so the example itself is what runs)."""
    cfg = yaml.safe_load((EXAMPLES / "tiny-cpu.yml").read_text(encoding="utf-8"))
    cfg["base_model"] = str(base_model)
    cfg["datasets"] = [{"path": str(dataset), "ds_type": "json", "type": "completion"}]
    cfg["dataset_prepared_path"] = str(work / "prepared")
    cfg["output_dir"] = str(work / "out")
    cfg["lep"]["vocab"]["corpus"] = [str(dataset.parent / "vocab-corpus.jsonl")]
    cfg["lep"]["vocab"].pop("max_chars", None)
    cfg["lep"].pop("propagate")  # its instruct model is the example's; a test that propagates names its own
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def training_data(directory: Path, docs: int = 60, vocab_docs: int = 400) -> Path:
    """A small slice of ru/train.jsonl to train on, with a larger slice beside it for the vocabulary."""
    directory.mkdir(parents=True, exist_ok=True)
    write_corpus_slice(RU_TRAIN, directory / "vocab-corpus.jsonl", vocab_docs)
    return write_corpus_slice(RU_TRAIN, directory / "train.jsonl", docs)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_train(config: Path, launcher: list[str] | None = None, timeout: int = TRAIN_TIMEOUT) -> str:
    """``axolotl train CONFIG`` as a subprocess; returns its combined output, fails the test on error."""
    cmd = [str(VENV_BIN / "axolotl"), "train", str(config)] + (launcher or [])
    proc = subprocess.run(
        cmd, cwd=config.parent, env=train_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    (config.parent / "train.log").write_text(output, encoding="utf-8")
    if proc.returncode != 0:
        pytest.fail(f"axolotl train failed (exit {proc.returncode}):\n{output[-6000:]}")
    return output


@contextlib.contextmanager
def busy_cores(count: int = 2, niceness: int = 19) -> Iterator[None]:
    """``count`` busy-loop processes beside the block, as on a node other jobs share (issue 23: ZeRO-3 on
    gloo went wrong only when a rank was slow). Niced by default: they take every moment a rank waits and
    perturb its scheduling, yet barely slow a run that keeps the cores busy itself."""
    # `nice` execs the loop in its own process: killing that pid ends the loop
    loops = [
        subprocess.Popen(["nice", "-n", str(niceness), sys.executable, "-c", "while True: pass"]) for _ in range(count)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def lep_lines(output: str, pattern: str) -> list[re.Match]:
    """Matches of ``pattern`` in the plugin's ``[lep rank N] ...`` lines."""
    return [m for m in re.finditer(r"\[lep rank (\d+)\] " + pattern, output)]


def private_files(directory: Path) -> list[str]:
    """Files under ``directory`` that others cannot read although the umask would let them (0600 ones)."""
    from lep_plugin.common.fs import current_umask

    readable = 0o444 & ~current_umask()
    return [str(p) for p in Path(directory).rglob("*") if p.is_file() and p.stat().st_mode & readable != readable]


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if not tensors:
        raise AssertionError(f"no safetensors in {directory}")
    return tensors


def losses(trainer_state: Path) -> list[float]:
    history = json.loads(trainer_state.read_text(encoding="utf-8"))["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def is_embedding(name: str) -> bool:
    return "embed_tokens" in name or "lm_head" in name


def assert_only_embeddings_changed(base_dir: Path, out_dir: Path) -> None:
    """Every non-embedding tensor bit-identical to the base model's; the embedding matrices changed."""
    base, new = load_weights(base_dir), load_weights(out_dir)
    assert set(base) == set(new)
    for name, tensor in base.items():
        if is_embedding(name):
            assert new[name].shape[0] != tensor.shape[0] or not torch.equal(new[name], tensor), name
        else:
            assert torch.equal(new[name], tensor), f"{name} changed although it should be frozen"


def rank_config(
    work: Path, base_model: Path, dataset: Path, train: str, micro_batch_size: int, deepspeed: str | None
) -> dict:
    """tiny-cpu.yml for the one-process vs two-rank comparisons: 4 steps, checkpoints at 2 and 4, no weight
    decay, and only full-length samples (``min_sample_len`` = ``sequence_len``). Axolotl sets
    ``average_tokens_across_devices: false``, so each rank's loss is the mean over its own tokens: with
    equal token counts per rank the averaged gradient is the one-process gradient of the same global batch."""
    cfg = tiny_config(
        work,
        base_model,
        dataset,
        max_steps=4,
        save_steps=2,
        weight_decay=0.0,
        micro_batch_size=micro_batch_size,
        deepspeed=str(EXAMPLES / deepspeed) if deepspeed else None,
    )
    cfg["min_sample_len"] = cfg["sequence_len"]
    cfg["lep"]["train"] = train
    return cfg


@dataclass(frozen=True)
class Zero3Run:
    base_model: Path  # the model trained (old vocabulary)
    output: Path  # axolotl output_dir (final HF model + new tokenizer + lep_vocab.json)
    checkpoint: Path  # output/checkpoint-N with global_stepN/ and latest
    step: int
    log: str  # the run's combined output
    config: dict  # the YAML it ran


def propagate_block(instruct: Path, output: Path, gguf: tuple[str, ...] = ("q8_0",)) -> dict:
    """A ``lep.propagate`` block for a test run: conversion into ``instruct``, a small evaluation on the
    Russian held-out text (sentences only), GGUF files of the types ``gguf``."""
    evaluation = {"texts": [str(RU_HELDOUT)], "samples": 2, "paragraphs": False, "max_new_tokens_sentence": 16}
    return {
        "instruct": str(instruct),
        "output": str(output),
        "eval": evaluation | {"bpc_chars": 2000},
        "gguf": list(gguf),
    }


def make_zero3_checkpoint(work: Path, base_model: Path, instruct: Path, train: str = "new_rows") -> Zero3Run:
    """The recipe: ``axolotl train`` + plugin (extend vocabulary) under DeepSpeed ZeRO-3 on two CPU ranks
    (gloo), 2 samples per rank, launched as users launch (``--launcher torchrun -- --nproc_per_node 2``),
    beside two busy loops (:func:`busy_cores`); its ``lep.propagate`` block (into ``instruct``, with an
    evaluation and a q8_0 GGUF) runs on rank 0 when training ends, into ``work/propagated``."""
    work.mkdir(parents=True, exist_ok=True)
    dataset = training_data(work / "data")
    cfg = rank_config(work, base_model, dataset, train, micro_batch_size=2, deepspeed="ds_zero3.json")
    cfg["lep"]["propagate"] = propagate_block(instruct, work / "propagated")
    with busy_cores():  # the ZeRO-3 cases run beside busy loops: a slow rank must not change the result
        log = run_train(write_config(work / "zero3.yml", cfg), launcher=TWO_RANKS)
    output = Path(cfg["output_dir"])
    return Zero3Run(base_model, output, output / "checkpoint-4", 4, log, cfg)
