"""The demo pipeline: every stage of the method, for real, on the CPU, into one output folder.

tiny base + instruct (trained here) → ``lep vocab build`` → ``axolotl train`` with the plugin
(embedding-only) → ``lep-merge --method all`` → ``lep eval`` original instruct vs the three LEP models
→ ``report.md`` + ``eval.png``. The CLIs run as subprocesses, exactly as a user would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lep_plugin.errors import LEPError

DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"
SHARED = Path("../shared/data")


def corpora(corpus: tuple[str, ...]) -> dict[str, list[str]]:
    """Texts per role: ``--corpus`` if given, else ``../shared/data`` if present, else the shipped texts."""
    shipped = {"lm": [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")], "instructions": [str(DEMO_DATA / "instructions.jsonl")]}
    if corpus:
        return shipped | {"target": list(corpus), "heldout": list(corpus)}
    if (SHARED / "ru" / "train.jsonl").is_file():
        return shipped | {"target": [str(SHARED / "ru" / "train.jsonl")],
                          "heldout": [str(SHARED / "ru" / "heldout.jsonl"), str(SHARED / "en" / "heldout.jsonl")]}
    return shipped | {"target": [str(DEMO_DATA / "ru.jsonl")], "heldout": [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")]}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # axolotl launches accelerate by name
    env.update(HF_HUB_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    return env


def _run(cmd: list[str], log_file: Path, echo) -> None:
    echo("  $ " + " ".join(cmd))
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), check=False)
    if proc.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise LEPError(f"{cmd[0]} failed (exit {proc.returncode}); last lines of {log_file}:\n" + "\n".join(tail))


def _axolotl_config(work: Path, base: Path, tokenizer: Path, target: list[str], steps: int) -> dict:
    return {
        "base_model": str(base),
        "plugins": ["lep_plugin.LEPPlugin"],
        "lep": {"vocab": {"tokenizer": str(tokenizer)}, "train": "embeddings"},
        "datasets": [{"path": target[0], "ds_type": "json", "type": "completion", "split": "train[:300]"}],
        "dataset_prepared_path": str(work / "prepared"),
        "val_set_size": 0,
        "output_dir": str(work / "adapted"),
        "sequence_len": 128,
        "sample_packing": False,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "save_strategy": "no",
        "optimizer": "adamw_torch",
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_epsilon": 1e-5, "weight_decay": 0.1,
        "learning_rate": 3e-3, "lr_scheduler": "cosine", "warmup_steps": 5,
        "bf16": False, "fp16": False, "tf32": False, "logging_steps": 10, "seed": 42,
    }


def run_demo(output: Path, corpus: tuple[str, ...], vocab_size: int, echo=print, base_seconds: float = 100,
             instruct_seconds: float = 80, train_steps: int = 60, samples: int = 8) -> str:
    from lep_plugin.demo.models import train_base, train_instruct
    from lep_plugin.vocab.build import build_vocabulary
    from lep_plugin.vocab.mistral import (
        import_mistral_common_tokenizer,
        mistral_common_file,
    )
    from lep_plugin.vocab.options import VocabOptions
    from lep_plugin.vocab.report import markdown_table, report

    texts = corpora(corpus)
    output.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def stage(name: str):
        times[name] = time.perf_counter()
        echo(f"[{len(times)}/6] {name}")

    stage("tiny base and instruct models (trained now, time-boxed)")
    tok = import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), output / "tokenizer-mistral")
    base = train_base(tok, [Path(p) for p in texts["lm"]], output / "base", base_seconds, echo)
    instruct = train_instruct(base, Path(texts["instructions"][0]), output / "instruct", instruct_seconds, echo)

    stage("lep vocab build: extend the Mistral vocabulary with a Russian BPE")
    new_tok = build_vocabulary(tok, texts["target"], VocabOptions(method="extend", vocab_size=vocab_size, max_chars=3_000_000),
                               output / "tokenizer-extend", force=True)

    stage("axolotl train with lep_plugin.LEPPlugin (embeddings only)")
    config = output / "train.yml"
    config.write_text(yaml.safe_dump(_axolotl_config(output, base, new_tok, texts["target"], train_steps), sort_keys=False), encoding="utf-8")
    _run([str(Path(sys.executable).parent / "axolotl"), "train", str(config)], output / "train.log", echo)

    stage("lep-merge --method all (swap, overlap, conversion)")
    _run([sys.executable, "-m", "lep_plugin.cli.merge", "--base", str(base), "--instruct", str(instruct),
          "--adapted", str(output / "adapted"), "--method", "all", "--output", str(output / "lep"), "--force"],
         output / "merge.log", echo)
    merged = sorted(p for p in (output / "lep").iterdir() if (p / "config.json").is_file())

    stage("lep eval: original instruct vs the LEP models")
    text_args = [a for t in texts["heldout"] for a in ("--text", t)]
    _run([sys.executable, "-m", "lep_plugin.cli.lep", "eval", str(instruct), *map(str, merged), *text_args,
          "--samples", str(samples), "--max-new-tokens-paragraph", "160", "--bpc-chars", "20000",
          "--json", str(output / "eval.json"), "--plot", str(output / "eval.png")], output / "eval.log", echo)
    eval_table = (output / "eval.log").read_text(encoding="utf-8")
    eval_table = "\n".join(line for line in eval_table.splitlines() if line.startswith("|"))

    stage("report")
    vocab_table = markdown_table(report([tok, new_tok], texts["heldout"]))
    ends = list(times.values())[1:] + [time.perf_counter()]
    timing = "\n".join(f"| {name} | {end - start:.0f} s |" for (name, start), end in zip(times.items(), ends))
    text = (
        "# LEP demo report\n\n## Evaluation (original instruct model vs its LEP versions)\n\n" + eval_table +
        "\n\n## Tokenization\n\n" + vocab_table + "\n\n## Wall time per stage\n\n| stage | time |\n| --- | ---: |\n" + timing + "\n"
    )
    (output / "report.md").write_text(text, encoding="utf-8")
    json.dumps(times)
    return text
