"""Two CPU ranks (gloo) launched as users launch – ``axolotl train CONFIG --launcher torchrun --
--nproc_per_node 2`` – under DDP, DeepSpeed ZeRO-2 and ZeRO-3, with ``train: embeddings`` and
``train: new_rows``: one vocabulary build, each rank its own half of the data, the same trained
embeddings as one process with the same global batch, frozen tensors bit-identical, resume.

Tolerance: the two-rank embeddings equal the one-process ones to 2e-5 absolute (values ~0.1; seen:
≤ 3e-6) – the gradients are the same sums in another order, then four AdamW steps.

The ZeRO-3 runs go beside busy loops (issue 23): DeepSpeed's gather of several parameters at once was
incomplete on gloo whenever a rank was slow, and the run then started from a half-gathered embedding
matrix (frozen rows moved, two ranks drifted from one process). :func:`test_zero3_gathers_complete_beside_busy_loops`
checks the gather itself, many times over, in seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _plugin_helpers import (
    TWO_RANKS,
    VENV_BIN,
    busy_cores,
    is_embedding,
    lep_lines,
    load_weights,
    rank_config,
    run_train,
    train_env,
    training_data,
    write_config,
)
from builders import RU_HELDOUT, write_corpus_slice

pytestmark = pytest.mark.e2e

DEEPSPEED = {"ddp": None, "zero2": "ds_zero2.json", "zero3": "ds_zero3.json"}
ATOL = 2e-5
GATHER_JOB = Path(__file__).parent / "_zero3_gather_job.py"


class Runs:
    """Each configuration trained once per session, on first use."""

    def __init__(self, root: Path, base: Path, zero3_run):
        self.root, self.base = root, base
        self.done: dict[tuple, tuple[dict, str]] = {}
        # the shared ZeRO-3 fixture (lep-merge and `lep vocab convert` read it too) is this matrix's zero3/new_rows
        self.done[("zero3", "new_rows", 2)] = (zero3_run.config, zero3_run.log)

    def get(self, launcher: str | None, train: str, ranks: int) -> tuple[dict, str]:
        key = (launcher, train, ranks)
        if key not in self.done:
            work = self.root / f"{launcher}-{train}-{ranks}"
            data = training_data(work / "data")
            # one process with 4 samples per step ↔ two ranks with 2 each: the same global batch
            cfg = rank_config(
                work, self.base, data, train, micro_batch_size=4 // ranks, deepspeed=DEEPSPEED.get(launcher)
            )
            if key == ("ddp", "embeddings", 2):
                # the training-time evaluation: one rank generates (the others wait), unless ZeRO-3/FSDP
                heldout = write_corpus_slice(RU_HELDOUT, work / "heldout.jsonl", 2)
                cfg["lep"]["eval"] = {
                    "texts": [str(heldout)],
                    "every_n_steps": 4,
                    "samples": 2,
                    "paragraphs": False,
                    "max_new_tokens_sentence": 8,
                    "bpc_chars": 500,
                }
            with busy_cores(count=2 if launcher == "zero3" else 0):  # ZeRO-3 beside busy loops (issue 23)
                log = run_train(write_config(work / "train.yml", cfg), launcher=TWO_RANKS if ranks == 2 else None)
            self.done[key] = (cfg, log)
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_mistral, zero3_checkpoint):
    return Runs(tmp_path_factory.mktemp("ranks"), tiny_mistral, zero3_checkpoint)


def _batches(log: str) -> dict[str, tuple[int, int]]:
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in lep_lines(log, r"(\d+) batches per rank of (\d+)")}


@pytest.mark.parametrize("train", ["embeddings", "new_rows"])
@pytest.mark.parametrize("launcher", ["ddp", "zero2", "zero3"])
def test_two_ranks_train_like_one_process(runs, tiny_mistral, launcher, train):
    one_cfg, one_log = runs.get(None, train, 1)
    cfg, log = runs.get(launcher, train, 2)

    built = lep_lines(log, r"vocabulary (\S+) \(built, fingerprint (\w+)")
    reused = lep_lines(log, r"vocabulary (\S+) \(reused, fingerprint (\w+)")
    assert len(built) == 1 and len(reused) == 1, "the vocabulary must be built by exactly one rank"
    assert {built[0].group(1), reused[0].group(1)} == {"0", "1"} and built[0].group(2, 3) == reused[0].group(2, 3)
    # each rank reads its own half: as many batches of 2 as one process has batches of 4
    ((one_batches, _),) = _batches(one_log).values()
    assert _batches(log) == {"0": (one_batches, 2), "1": (one_batches, 2)}
    if launcher in ("zero2", "zero3"):
        assert lep_lines(log, "no CUDA: initialised a gloo process group for DeepSpeed")

    base = load_weights(tiny_mistral)
    out = Path(cfg["output_dir"])
    for step_dir in ("checkpoint-2", "."):
        alone = load_weights(Path(one_cfg["output_dir"]) / step_dir)
        together = load_weights(out / step_dir)
        for name, tensor in base.items():
            if is_embedding(name):
                torch.testing.assert_close(together[name], alone[name], atol=ATOL, rtol=0, msg=f"{step_dir} {name}")
                if train == "new_rows":  # extend keeps the old ids: their rows stay the base's, exactly
                    assert torch.equal(together[name][: tensor.shape[0]], tensor), name
            else:
                assert torch.equal(together[name], tensor), f"{name} changed although frozen"
    halfway, final = load_weights(out / "checkpoint-2"), load_weights(out)
    rows = base["lm_head.weight"].shape[0]
    assert not torch.equal(halfway["lm_head.weight"][rows:], final["lm_head.weight"][rows:])  # steps 3-4 trained


@pytest.mark.parametrize("launcher", ["ddp", "zero2", "zero3"])
def test_two_ranks_resume_from_checkpoint(runs, tmp_path, launcher):
    """Resuming at checkpoint-2 (DeepSpeed: its global_step2 partitions) ends where the uninterrupted run did."""
    train = "new_rows" if launcher == "zero3" else "embeddings"
    cfg, _ = runs.get(launcher, train, 2)
    first = Path(cfg["output_dir"])
    shutil.copytree(first / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    resumed = dict(cfg, output_dir=str(tmp_path / "out"), resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    resumed["lep"] = {k: v for k, v in cfg["lep"].items() if k not in ("eval", "propagate")}  # its output is taken
    log = run_train(write_config(tmp_path / "resume.yml", resumed), launcher=TWO_RANKS)
    assert re.search(r"[Cc]ontinuing training from checkpoint|resum", log), "did not resume"
    steps = [m for m in re.finditer(r"'loss': '([0-9.]+)'", log)]
    assert 0 < len(steps) <= 2 * 2  # steps 3 and 4 only (logged by each rank at most)
    final, reference = load_weights(tmp_path / "out"), load_weights(first)
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], atol=ATOL, rtol=0, msg=name)


def test_evaluation_runs_on_one_rank_without_sharding(runs):
    """Under DDP every rank holds the whole model: only rank 0 generates, the history is written once."""
    cfg, log = runs.get("ddp", "embeddings", 2)
    evaluated = {m.group(1) for m in lep_lines(log, r"lep\.eval at step 4")}
    assert evaluated == {"0"}
    assert (Path(cfg["output_dir"]) / "lep_eval_history.json").is_file()


def test_zero3_gathers_complete_beside_busy_loops():
    """The plugin's ZeRO-3 gather (``common.distributed.gathered``: the conversion reads the embedding and
    lm_head with it, then writes them from rank 0) is whole on both gloo ranks, 50 times, beside two busy
    loops at normal priority. DeepSpeed's own gather of both at once (job mode ``deepspeed``) got 8 of 50
    wrong on each rank under the same load."""
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(GATHER_JOB), "lep", "50"]
    with busy_cores(count=2, niceness=0):
        proc = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert sorted(re.findall(r"rank (\d): (\d+) wrong of 50 gathers", output)) == [("0", "0"), ("1", "0")], output[
        -4000:
    ]
