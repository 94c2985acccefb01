"""A CPU-sized analogue of the paper's experiment (issue 5), from one command:

    python benchmarks/mini_reproduction.py [--output out/mini] [--minutes-base 5] [--minutes-instruct 6] [--threads 1]

1. an English-leaning byte-level tokenizer (BPE trained on the shipped English texts plus a little
   Russian, in the Tekken/Llama-3 style), so Russian splits into short pieces as in the real models;
2. base: a small Llama trained from scratch on the shipped English and Russian texts plus the start of
   the Russian training corpus; half of its sequences write a passage twice, so that induction (copy)
   heads form;
3. instruct: the base fine-tuned on the shipped chat instructions (copy and simple transformations, both
   languages) plus copy-instruction chats made by `lep data copy-task`'s builder from *training* texts
   (never the held-out files), so that the instruct model really copies and the copy scores can show
   what LEP keeps (`--copy-examples 0` gives the old mixture);
4. Russian vocabularies (`extend` and `bpe`), embedding-only `axolotl train` of the base with the plugin;
5. `lep-merge --method all` (swap / overlap / conversion) for each vocabulary, and the calibration step:
   a short LoRA on copy chats (examples/yaml/calibration-tiny-cpu.yml) on top of extend/conversion,
   merged with `axolotl merge-lora` (`--calibration-steps 0` skips it);
6. `lep eval` of every model: chars/token, bits/char, Russian and English copy scores, and the wall time
   of each stage, then the issue's goal checked on the conversion models. Figures are printed and
   written to OUTPUT/report.md, whatever they show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from lep_plugin.calibration.copy_task import copy_mixture, mixture_summary
from lep_plugin.calibration.lora import calibrate
from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.fs import write_jsonl_atomic
from lep_plugin.common.processes import run_logged
from lep_plugin.demo.models import train_base, train_instruct
from lep_plugin.demo.pipeline import DEMO_DATA, SHARED, embedding_training_config
from lep_plugin.demo.repetition import RepetitionOptions
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import VocabOptions


def goal_check(eval_json: Path) -> str:
    """The issue's goal per conversion model: Russian copy kept (≥ 90 % of the instruct model's), tokens
    per Russian character (≥ 1.4× fewer), English copy beside the instruct model's."""
    results = {r["model"]: r["texts"] for r in json.loads(eval_json.read_text(encoding="utf-8"))["results"]}
    ref = results["instruct"]
    rows = [
        "| model | ru copy kept | ru tokens per char vs instruct | en copy kept | goal (≥ 90 %, ≥ 1.4×) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, texts in results.items():
        if name == "instruct":
            continue
        kept = texts["ru/heldout"]["sentence_copy"] / ref["ru/heldout"]["sentence_copy"]
        fewer = texts["ru/heldout"]["chars_per_token"] / ref["ru/heldout"]["chars_per_token"]
        en_kept = texts["en/heldout"]["sentence_copy"] / ref["en/heldout"]["sentence_copy"]
        met = "met" if kept >= 0.9 and fewer >= 1.4 else "not met"
        rows.append(f"| {name} | {kept:.0%} | {fewer:.2f}× fewer | {en_kept:.0%} | {met} |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/mini"))
    parser.add_argument("--minutes-base", type=float, default=5)
    parser.add_argument("--minutes-instruct", type=float, default=6)
    parser.add_argument(
        "--base-russian-chars",
        type=int,
        default=3_000_000,
        help="characters of the Russian training corpus added to the base's texts "
        "(a small corpus is memorised, and then no copy head forms)",
    )
    parser.add_argument(
        "--repeat", type=float, default=0.5, help="share of the base's text windows that repeat a passage"
    )
    parser.add_argument(
        "--copy-examples", type=int, default=4000, help="copy chats from training texts added to the instruct mixture"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the two model trainings (0: torch's default); "
        "1 on a machine shared with other jobs, where more threads than free cores make each step "
        "several times slower and the time boxes give few steps",
    )
    parser.add_argument(
        "--calibration-steps",
        type=int,
        default=60,
        help="steps of the calibration LoRA (the calibration LoRA of arXiv:2412.21140, §4) "
        "on the extend/conversion model; 0 skips it",
    )
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--samples", type=int, default=16)
    return parser.parse_args()


@dataclass
class Run:
    """What every stage reads: the arguments, the output folder, the corpora, and the stage times so far."""

    args: argparse.Namespace
    out: Path
    ru_train: list[str]
    heldout: list[str]
    times: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        value = fn()
        self.times[name] = time.perf_counter() - start
        return value


def setup(args: argparse.Namespace) -> Run:
    """The output folder, torch threads, and the corpora: ``../shared/data`` if present, else the shipped texts."""
    args.output.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    shared_train = SHARED / "ru" / "train.jsonl"
    ru_train = [str(shared_train)] if shared_train.is_file() else [str(DEMO_DATA / "ru.jsonl")]
    if (SHARED / "ru").is_dir():
        heldout = [str(SHARED / "ru" / "heldout.jsonl"), str(SHARED / "en" / "heldout.jsonl")]
    else:
        heldout = [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")]
    return Run(args, args.output, ru_train, heldout)


def stage_base(run: Run) -> tuple[Path, Path]:
    """The English-leaning tokenizer and the base trained from scratch: (tokenizer dir, base dir)."""
    out, args = run.out, run.args
    source = mistral_common_file("tekken_240718.json")
    tekken = run.timed("import Tekken (style source)", lambda: import_mistral_common_tokenizer(source, out / "tekken"))
    # English-leaning: trained on the English texts plus the first Russian documents (about 1/10)
    mix = out / "english-leaning.jsonl"
    en_lines = (DEMO_DATA / "en.jsonl").read_text(encoding="utf-8").splitlines()
    ru_lines = (DEMO_DATA / "ru.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    mix.write_text("\n".join(en_lines + ru_lines) + "\n", encoding="utf-8")
    options = VocabOptions(method="bpe", vocab_size=3500)
    old_tok = run.timed(
        "English-leaning tokenizer", lambda: build_vocabulary(tekken, [mix], options, out / "tok-en", force=True)
    )

    ru_more = out / "base-russian.jsonl"
    ru_records = ({"text": t} for t in iter_texts(run.ru_train, max_chars=args.base_russian_chars))
    write_jsonl_atomic(ru_records, ru_more, force=True)
    lm_texts = [mix, DEMO_DATA / "en.jsonl", DEMO_DATA / "ru.jsonl", ru_more]
    base = run.timed(
        "base model from scratch",
        lambda: train_base(
            old_tok,
            lm_texts,
            out / "base",
            args.minutes_base * 60,
            hidden=128,
            layers=3,
            seq=256,
            repetition=RepetitionOptions(share=args.repeat),
            schedule=True,
        ),
    )
    return old_tok, base


def stage_instruct(run: Run, base: Path) -> tuple[Path, str]:
    """The instruct model: the shipped chat instructions plus copy chats from training texts; (its dir, the
    mixture in words)."""
    out, args = run.out, run.args
    texts = {
        "ru": list(iter_texts(run.ru_train, max_chars=1_000_000)),
        "en": list(iter_texts([DEMO_DATA / "en.jsonl"])),
    }
    copies, counts = copy_mixture(texts, args.copy_examples) if args.copy_examples else ([], Counter())
    write_jsonl_atomic(copies, out / "instruct-copy.jsonl", force=True)
    mixture = f"{len(copies)} copy chats ({mixture_summary(counts)}) + the shipped {DEMO_DATA / 'instructions.jsonl'}"
    print("instruct mixture:", mixture)
    instruct = run.timed(
        "instruct model",
        lambda: train_instruct(
            base,
            DEMO_DATA / "instructions.jsonl",
            out / "instruct",
            args.minutes_instruct * 60,
            extra=copies,
            lr=2e-3,
            max_len=384,
            schedule=True,
        ),
    )
    return instruct, mixture


def stage_vocabulary_lep(run: Run, method: str, old_tok: Path, base: Path, instruct: Path) -> list[Path]:
    """A Russian vocabulary by ``method``, embedding-only ``axolotl train`` of the base, ``lep-merge --method
    all``; the merged models."""
    out, args = run.out, run.args
    options = VocabOptions(method=method, vocab_size=3500 if method == "bpe" else 3000, max_chars=3_000_000)
    tok = run.timed(
        f"{method} Russian vocabulary",
        lambda: build_vocabulary(old_tok, run.ru_train, options, out / f"tok-{method}", force=True),
    )
    work = out / f"train-{method}"
    work.mkdir(exist_ok=True)
    cfg = embedding_training_config(work, base, tok, run.ru_train, args.train_steps)
    (work / "train.yml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    train = [str(Path(sys.executable).parent / "axolotl"), "train", str(work / "train.yml")]
    run.timed(f"{method}: axolotl train (embeddings only)", lambda: run_logged(train, work / "train.log", print))
    merge = [
        sys.executable,
        "-m",
        "lep_plugin.cli.merge",
        "--base",
        str(base),
        "--instruct",
        str(instruct),
        "--adapted",
        str(work / "adapted"),
        "--method",
        "all",
        "--output",
        str(out / f"lep-{method}"),
        "--force",
    ]
    run.timed(f"{method}: lep-merge all", lambda: run_logged(merge, work / "merge.log", print))
    return sorted(p for p in (out / f"lep-{method}").iterdir() if (p / "config.json").is_file())


def stage_calibration(run: Run) -> Path:
    """The calibration LoRA on extend/conversion, merged."""
    return run.timed(
        "extend/conversion: calibration LoRA + merge-lora",
        lambda: calibrate(
            run.out / "lep-extend" / "conversion", run.ru_train, run.out / "calibration", run.args.calibration_steps
        ),
    )


def stage_evaluation(run: Run, models: list[Path]) -> str:
    """``lep eval`` of every model (eval.json, eval.png); the table it printed."""
    out = run.out
    text_args = [a for t in run.heldout for a in ("--text", t)]
    cmd = [
        sys.executable,
        "-m",
        "lep_plugin.cli.lep",
        "eval",
        *map(str, models),
        *text_args,
        "--samples",
        str(run.args.samples),
        "--max-new-tokens-paragraph",
        "200",
        "--json",
        str(out / "eval.json"),
        "--plot",
        str(out / "eval.png"),
    ]
    run.timed("lep eval (all models)", lambda: run_logged(cmd, out / "eval.log", print))
    lines = (out / "eval.log").read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("|"))


def stage_report(run: Run, models: list[Path], mixture: str, table: str) -> None:
    """OUTPUT/report.md: the eval table, the issue's goal, the stage times; printed too."""
    out, times = run.out, run.times
    timing = "\n".join(f"| {k} | {v:.0f} s |" for k, v in times.items())
    goal = "(needs the held-out corpora in ../shared/data)"
    if (SHARED / "ru").is_dir():
        goal = goal_check(out / "eval.json")
    report = (
        f"# Mini reproduction\n\nmodels: {', '.join(str(m) for m in models)}\n\n"
        f"instruct mixture: {mixture}\n\n{table}\n\n"
        "## Goal of issue 5 (conversion keeps ≥ 90 % of the Russian copy score with ≥ 1.4× fewer tokens)\n\n"
        f"{goal}\n\n"
        f"| stage | wall time |\n| --- | ---: |\n{timing}\n| total | {sum(times.values()):.0f} s |\n"
    )
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(json.dumps({k: round(v, 1) for k, v in times.items()}))


def main() -> None:
    run = setup(parse_args())
    old_tok, base = stage_base(run)
    instruct, mixture = stage_instruct(run, base)
    models = [instruct]
    for method in ("extend", "bpe"):
        models += stage_vocabulary_lep(run, method, old_tok, base, instruct)
    if run.args.calibration_steps:
        models.append(stage_calibration(run))
    table = stage_evaluation(run, models)
    stage_report(run, models, mixture, table)


if __name__ == "__main__":
    main()
