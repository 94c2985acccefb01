"""The GPU check of the path a real 8B run takes (issue 15): one command, at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--output out/gpu-check] [--device cuda] [--skip-8b]

1. a tiny Llama-3-layout model (``lep tiny --family llama3``: byte-level BPE, specials appended after it)
   and an ``extend`` Russian vocabulary from ../shared/data/ru/train.jsonl;
2. the plugin's ``axolotl train`` in bf16 on the GPU, ``train: embeddings`` and ``train: new_rows``, each
   plain, under DeepSpeed ZeRO-3 and under FSDP2 (``fsdp_version: 2``); each run checked: every
   non-embedding tensor bit-identical to the base, and with ``new_rows`` every old row too;
3. ``lep-merge --device cuda`` against ``--device cpu`` on the same inputs (goal: 1e-6 relative);
4. one embedding-only training step of an 8B-shaped Llama (vocabulary 140,000, d = 4,096, 14,336 MLP,
   32/8 heads, 2 layers, bf16, batch 1 × 1,024) against a full-parameter step of the same model: peak GPU
   memory and step time (``benchmarks/bench_train.py``'s loop, each mode in its own process).

Prints one table (markdown) and writes it to OUTPUT/gpu_check.md; a stage that fails is a row with its
reason, and the others still run. ``--device cpu`` runs what a CPU can, to check the script itself:
float32, ZeRO-3 over gloo, no FSDP (Axolotl builds its FSDP mesh for CUDA only), a small model in step 4.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import run_mode  # noqa: E402

from lep_plugin.checkpoints.discover import open_checkpoint  # noqa: E402
from lep_plugin.common.processes import run_logged  # noqa: E402
from lep_plugin.demo.pipeline import SHARED  # noqa: E402

BIN = Path(sys.executable).parent
FSDP = {
    "fsdp_version": 2,
    "fsdp_config": {
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
        "offload_params": False,
        "cpu_ram_efficient_loading": False,
    },
}


def _run(cmd: list[str], log: Path) -> float:
    """``demo.pipeline``'s runner (its error names the log and quotes its end), timed."""
    start = time.perf_counter()
    run_logged(cmd, log, lambda _: None)
    return time.perf_counter() - start


def _weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = open_checkpoint(path, "model", prefer_deepspeed=False)
    return {name: checkpoint.get(name) for name in checkpoint.names()}


def _train_config(work: Path, base: Path, corpus: Path, train: str, sharding: str, cuda: bool) -> dict:
    cfg = yaml.safe_load((REPO / "examples" / "yaml" / "tiny-cpu.yml").read_text(encoding="utf-8"))
    cfg.update(
        base_model=str(base),
        dataset_prepared_path=str(work / "prepared"),
        output_dir=str(work / "out"),
        datasets=[{"path": str(corpus), "ds_type": "json", "type": "completion", "split": "train[:40]"}],
        max_steps=4,
        save_steps=4,
        weight_decay=0.0,
        bf16=cuda,
        tf32=False,
    )
    cfg["lep"]["vocab"]["corpus"] = [str(corpus)]
    cfg["lep"]["train"] = train
    if sharding == "zero3":
        cfg["deepspeed"] = str(REPO / "examples" / "yaml" / "ds_zero3.json")
    elif sharding == "fsdp":
        cfg.update(FSDP)
    return cfg


def _initial_embeddings(base: Path, out: Path) -> dict[str, torch.Tensor]:
    """The T-initialised embeddings the run started from (the base converted to the run's vocabulary)."""
    from transformers import AutoModelForCausalLM

    from lep_plugin.common.tokenizers import load_tokenizer
    from lep_plugin.vocab.convert import convert_embeddings

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    convert_embeddings(model, load_tokenizer(out), load_tokenizer(base))
    return {name: p.detach() for name, p in model.named_parameters() if "embed_tokens" in name or "lm_head" in name}


def check_training(out: Path, base: Path, train: str) -> str:
    """Frozen tensors bit-identical to the base; the embeddings trained (with new_rows: the new rows
    moved from their T-initialisation and the old rows stayed the base's)."""
    before, after, start_rows = _weights(base), _weights(out), _initial_embeddings(base, out)
    for name, start in before.items():
        trained = after[name]
        tensor = start.to(trained.dtype)  # a bf16 run saves the frozen tensors as the bf16 model held them
        if name in start_rows:
            rows = tensor.shape[0]
            old_kept = torch.equal(trained[:rows], tensor)
            if train == "new_rows" and not old_kept:
                return f"FAILED: old rows of {name} moved"
            if train == "embeddings" and old_kept:
                return f"FAILED: the old rows of {name} did not train"
            if torch.equal(trained[rows:], start_rows[name][rows:].to(trained.dtype)):
                return f"FAILED: the new rows of {name} did not train"
        elif not torch.equal(trained, tensor):
            return f"FAILED: {name} changed although frozen"
    return "embeddings trained, frozen tensors bit-identical" + (", old rows kept" if train == "new_rows" else "")


def compare_merges(work: Path, base: Path, instruct: Path, adapted: Path, device: str) -> tuple[str, float]:
    if device == "cpu":
        return "skipped: no GPU to compare the CPU path with", 0.0
    outputs, seconds = {}, {}
    for where in (device, "cpu"):
        outputs[where] = work / f"merge-{where}"
        shutil.rmtree(outputs[where], ignore_errors=True)
        seconds[where] = _run(
            [
                str(BIN / "lep-merge"),
                "--base",
                str(base),
                "--instruct",
                str(instruct),
                "--adapted",
                str(adapted),
                "--output",
                str(outputs[where]),
                "--device",
                where,
            ],
            work / f"merge-{where}.log",
        )
    a, b = _weights(outputs[device]), _weights(outputs["cpu"])
    worst = max(float((a[n].double() - b[n].double()).norm() / b[n].double().norm().clamp_min(1e-30)) for n in b)
    report = json.loads((outputs[device] / "lep_merge.json").read_text(encoding="utf-8"))
    verdict = "met" if worst <= 1e-6 else "NOT met"
    return (
        f"ran on {report.get('device')}; max relative difference {worst:.1e} (goal ≤ 1e-6: {verdict}); "
        f"{seconds[device]:.0f} s vs {seconds['cpu']:.0f} s"
    ), worst


def step_8b(device: str, small: bool) -> str:
    shape = (
        dict(vocab=32000, hidden=256, layers=2, heads=4, kv_heads=4, intermediate=1024, batch=1, seq=128)
        if small
        else dict(vocab=140_000, hidden=4096, layers=2, heads=32, kv_heads=8, intermediate=14336, batch=1, seq=1024)
    )
    args = {
        **shape,
        "steps": 3,
        "warmup": 1,
        "threads": 2,
        "device": device,
        "dtype": "bfloat16" if device != "cpu" else "float32",
    }
    context = mp.get_context("spawn")
    results = {}
    for mode in ("full", "embeddings"):
        queue = context.Queue()
        process = context.Process(target=run_mode, args=(mode, args, queue))
        process.start()
        process.join(timeout=300)  # a child that dies (out of memory) puts nothing: never wait on it forever
        if process.is_alive():
            process.kill()
            raise RuntimeError(f"{mode} step did not finish in 300 s")
        if process.exitcode != 0:
            raise RuntimeError(f"{mode} step exited with {process.exitcode}")
        results[mode] = queue.get(timeout=10)
    full, emb = results["full"], results["embeddings"]
    unit = "GiB allocated" if device != "cpu" else "GiB max RSS"
    return (
        f"vocab {shape['vocab']:,}, d={shape['hidden']}, {shape['layers']} layers, {args['dtype']}: embeddings step "
        f"{emb['step_s'] * 1e3:.0f} ms / full {full['step_s'] * 1e3:.0f} ms = "
        f"{emb['step_s'] / full['step_s']:.2f}×; peak "
        f"{emb['peak_mib'] / 1024:.1f} / {full['peak_mib'] / 1024:.1f} {unit} = "
        f"{emb['peak_mib'] / full['peak_mib']:.2f}×"
    )


class Stages:
    """Runs named stages; each gives one row of the table, a failure included (the others still run)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def run(self, name: str, fn) -> object:
        start = time.perf_counter()
        try:
            result = fn()
            self.rows.append(
                (name, f"{result if isinstance(result, str) else 'ok'} ({time.perf_counter() - start:.0f} s)")
            )
            return result
        except Exception as err:  # a failed stage is a row of the table; the others still run
            self.rows.append((name, f"FAILED: {err}"))
            return None
        finally:
            print(f"{name}: {self.rows[-1][1]}", flush=True)


def stage_tiny_model(stages: Stages, work: Path) -> Path:
    """The tiny Llama-3 layout pair (``lep tiny``) and a 300-document Russian corpus."""
    models = work / "tiny-llama3"
    lines = (SHARED / "ru" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    (work / "ru.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [str(BIN / "lep"), "tiny", "--family", "llama3", "--bpe-size", "8000", "--output", str(models), "--force"]
    stages.run("tiny Llama-3 layout model", lambda: _run(cmd, work / "tiny.log") and "built")
    return models


def stage_trainings(stages: Stages, work: Path, base: Path, device: str) -> None:
    """``axolotl train`` with the plugin for each sharding × training mode, each run checked."""
    cuda = device.startswith("cuda")
    for sharding in ["plain", "zero3"] + (["fsdp"] if cuda else []):
        for train in ("embeddings", "new_rows"):
            run = work / f"train-{sharding}-{train}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            cfg = _train_config(run, base, work / "ru.jsonl", train, sharding, cuda)
            (run / "train.yml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

            def train_and_check(run=run, train=train):
                _run([str(BIN / "axolotl"), "train", str(run / "train.yml")], run / "train.log")
                return check_training(run / "out", base, train)

            precision = f"bf16 on {device}" if cuda else "fp32 on CPU"
            stages.run(f"axolotl train, {sharding}, {train}, {precision}", train_and_check)


def write_table(work: Path, rows: list[tuple[str, str]], cuda: bool) -> None:
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU)"
    lines = [f"GPU: {gpu}; torch {torch.__version__}", "", "| check | result |", "| --- | --- |"]
    table = "\n".join([*lines, *(f"| {name} | {result} |" for name, result in rows)])
    (work / "gpu_check.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/gpu-check"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-8b", action="store_true", help="leave out step 4")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    work = args.output.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    models = stage_tiny_model(stages, work)
    base, instruct = models / "base", models / "instruct"
    stage_trainings(stages, work, base, args.device)
    adapted = work / "train-plain-embeddings" / "out"
    stages.run(
        f"lep-merge --device {args.device} vs --device cpu",
        lambda: compare_merges(work, base, instruct, adapted, args.device)[0],
    )
    if not args.skip_8b:
        name = "8B-shaped step: embeddings only vs full" if cuda else "small-model step (CPU): embeddings only vs full"
        stages.run(name, lambda: step_8b(args.device, small=not cuda))
    write_table(work, stages.rows, cuda)


if __name__ == "__main__":
    main()
