"""The demo pipeline: every stage of the method, for real, on the CPU, into one output folder.

tiny base + instruct (trained here) → ``lep vocab build`` → ``axolotl train`` with the plugin
(embedding-only) → ``lep-merge --method all`` → ``lep eval`` original instruct vs the three LEP models
→ ``report.md`` + ``eval.png``. The CLIs run as subprocesses, exactly as a user would run them.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.fs import read_json, write_json
from lep_plugin.common.processes import run_logged
from lep_plugin.demo.models import repeat_losses, train_base, train_instruct
from lep_plugin.demo.repetition import RepetitionOptions, write_repetition_corpus
from lep_plugin.evaluation.report import markdown_table as eval_markdown_table
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import VocabOptions
from lep_plugin.vocab.report import markdown_table, report

DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"
# the texts of the base and of the embedding training: windows, half of them with a repeated passage
REPETITION = RepetitionOptions(share=0.5)


def _shared_data() -> Path:
    """``../shared/data`` beside the project checkout (whatever the working directory), else beside the
    working directory (an installed package has no checkout around it)."""
    beside_checkout = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside_checkout if beside_checkout.is_dir() else Path("../shared/data")


SHARED = _shared_data()


def corpora(corpus: tuple[str, ...]) -> dict[str, list[str]]:
    """Texts per role: ``--corpus`` if given, else ``../shared/data`` if present, else the shipped texts."""
    shipped = {
        "lm": [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")],
        "instructions": [str(DEMO_DATA / "instructions.jsonl")],
    }
    if corpus:
        return shipped | {"target": list(corpus), "heldout": list(corpus)}
    if (SHARED / "ru" / "train.jsonl").is_file():
        return shipped | {
            "target": [str(SHARED / "ru" / "train.jsonl")],
            "heldout": [str(SHARED / "ru" / "heldout.jsonl"), str(SHARED / "en" / "heldout.jsonl")],
        }
    return shipped | {
        "target": [str(DEMO_DATA / "ru.jsonl")],
        "heldout": [str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")],
    }


def embedding_training_config(work: Path, base: Path, tokenizer: Path, target: list[str], steps: int) -> dict:
    """The demo's Axolotl YAML (as a dict): embedding-only training of ``base`` with the plugin, on CPU."""
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
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-5,
        "weight_decay": 0.1,
        "learning_rate": 3e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 5,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "logging_steps": 10,
        "seed": 42,
    }


# the demo's stages in order, as announced ([k/6] name) and timed in the report
STAGES = (
    "tiny base and instruct models (trained now, time-boxed)",
    "lep vocab build: extend the Mistral vocabulary with a Russian BPE",
    "axolotl train with lep_plugin.LEPPlugin (embeddings only)",
    "lep-merge --method all (swap, overlap, conversion)",
    "lep eval: original instruct vs the LEP models",
    "report",
)


@dataclass
class Demo:
    """What the stages share: the output folder, the texts per role, the echo, and when each stage began."""

    output: Path
    texts: dict[str, list[str]]
    echo: Callable[[str], None]
    started: dict[str, float] = field(default_factory=dict)
    repeat_losses: dict[str, dict[str, float]] = field(default_factory=dict)

    def stage(self, name: str) -> None:
        self.started[name] = time.perf_counter()
        self.echo(f"[{len(self.started)}/{len(STAGES)}] {name}")


def stage_models(
    demo: Demo, base_seconds: float, instruct_seconds: float, copy_warmup_seconds: float
) -> tuple[Path, Path, Path]:
    """The real Mistral-7B tokenizer, a tiny base and its tiny instruct version: (tokenizer, base, instruct)."""
    demo.stage(STAGES[0])
    output, texts = demo.output, demo.texts
    tok = import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), output / "tokenizer-mistral")
    lm_texts = [Path(p) for p in texts["lm"]]
    base = train_base(
        tok,
        lm_texts,
        output / "base",
        base_seconds,
        demo.echo,
        repetition=REPETITION,
        copy_warmup_seconds=copy_warmup_seconds,
    )
    instruct = train_instruct(base, Path(texts["instructions"][0]), output / "instruct", instruct_seconds, demo.echo)
    heldout = [Path(texts["heldout"][0])]
    for name, model_dir in (("base", base), ("instruct", instruct)):
        demo.repeat_losses[name] = repeat_losses(model_dir, iter_texts(heldout))
    demo.echo(f"  repeat-loss ratio (held-out passage written again / first occurrence): {demo.repeat_losses}")
    return tok, base, instruct


def stage_vocab(demo: Demo, tok: Path, vocab_size: int) -> Path:
    demo.stage(STAGES[1])
    options = VocabOptions(method="extend", vocab_size=vocab_size, max_chars=3_000_000)
    return build_vocabulary(tok, demo.texts["target"], options, demo.output / "tokenizer-extend", force=True)


def stage_embedding_training(demo: Demo, base: Path, new_tok: Path, train_steps: int) -> None:
    demo.stage(STAGES[2])
    output = demo.output
    config = output / "train.yml"
    # the base's share of repeated passages in the embedding texts too: the new embeddings serve its copy heads
    docs = itertools.islice(iter_texts(demo.texts["target"]), 300)
    texts = write_repetition_corpus(docs, output / "train-texts.jsonl", REPETITION, seed=1)
    settings = embedding_training_config(output, base, new_tok, [str(texts)], train_steps)
    settings["datasets"][0]["split"] = "train"
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    run_logged([str(Path(sys.executable).parent / "axolotl"), "train", str(config)], output / "train.log", demo.echo)


def stage_merges(demo: Demo, base: Path, instruct: Path) -> list[Path]:
    """``lep-merge --method all``; the merged model dirs."""
    demo.stage(STAGES[3])
    output = demo.output
    run_logged(
        [
            sys.executable,
            "-m",
            "lep_plugin.cli.merge",
            "--base",
            str(base),
            "--instruct",
            str(instruct),
            "--adapted",
            str(output / "adapted"),
            "--method",
            "all",
            "--output",
            str(output / "lep"),
            "--force",
        ],
        output / "merge.log",
        demo.echo,
    )
    return sorted(p for p in (output / "lep").iterdir() if (p / "config.json").is_file())


def stage_evaluation(demo: Demo, instruct: Path, merged: list[Path], samples: int) -> str:
    """``lep eval`` of the instruct model and its LEP versions: its table, and OUTPUT/summary.json."""
    demo.stage(STAGES[4])
    output = demo.output
    text_args = [a for t in demo.texts["heldout"] for a in ("--text", t)]
    run_logged(
        [
            sys.executable,
            "-m",
            "lep_plugin.cli.lep",
            "eval",
            str(instruct),
            *map(str, merged),
            *text_args,
            "--samples",
            str(samples),
            "--max-new-tokens-paragraph",
            "160",
            "--bpc-chars",
            "20000",
            "--json",
            str(output / "eval.json"),
            "--plot",
            str(output / "eval.png"),
        ],
        output / "eval.log",
        demo.echo,
    )
    records = read_json(output / "eval.json", "lep eval results")["results"]
    summary = strict_copy_summary(records) | {"base": {"repeat_loss_ratio": demo.repeat_losses["base"]["ratio"]}}
    write_json(output / "summary.json", summary)
    return eval_markdown_table(records)


def strict_copy_summary(records: list[dict]) -> dict:
    """What the demo shows in numbers: the strict Russian sentence copy score (character similarity) of
    the instruct model, its chance level, and each LEP model's (records: ``lep eval --json``'s results,
    the instruct model first; the first held-out text is the Russian one)."""
    label = next(iter(records[0]["texts"]))
    instruct = records[0]["texts"][label]
    return {
        "text": label,
        "instruct": {"ru_strict": instruct["sentence_strict"]},
        "chance": {"ru_strict": instruct["chance"]["sentence_strict"]},
        "methods": {r["model"]: {"ru_strict": r["texts"][label]["sentence_strict"]} for r in records[1:]},
    }


def stage_report(demo: Demo, tok: Path, new_tok: Path, eval_table: str) -> str:
    """OUTPUT/report.md: the evaluation, the tokenization of both vocabularies, the wall time per stage."""
    demo.stage(STAGES[5])
    vocab_table = markdown_table(report([tok, new_tok], demo.texts["heldout"]))
    ends = list(demo.started.values())[1:] + [time.perf_counter()]
    timing = "\n".join(f"| {name} | {end - start:.0f} s |" for (name, start), end in zip(demo.started.items(), ends))
    losses = demo.repeat_losses
    premise = (
        f"Copying in context before any instruction step (LEP's premise): the base's loss on a held-out passage "
        f"written again is {losses['base']['ratio']:.2f} of its loss on the first occurrence (instruct: "
        f"{losses['instruct']['ratio']:.2f}; 1.00 = no copying; the claim benchmark's goal is ≤ 0.5)."
    )
    text = (
        "# LEP demo report\n\n## Evaluation (original instruct model vs its LEP versions)\n\n"
        + premise
        + "\n\n"
        + eval_table
        + "\n\n## Tokenization\n\n"
        + vocab_table
        + "\n\n## Wall time per stage\n\n| stage | time |\n| --- | ---: |\n"
        + timing
        + "\n"
    )
    (demo.output / "report.md").write_text(text, encoding="utf-8")
    return text


def run_demo(
    output: Path,
    corpus: tuple[str, ...],
    vocab_size: int,
    echo=print,
    base_seconds: float = 100,
    instruct_seconds: float = 80,
    copy_warmup_seconds: float = 0,
    train_steps: int = 60,
    samples: int = 8,
) -> str:
    """Every stage of the method into ``output``; the report's text."""
    output.mkdir(parents=True, exist_ok=True)
    demo = Demo(output, corpora(corpus), echo)
    tok, base, instruct = stage_models(demo, base_seconds, instruct_seconds, copy_warmup_seconds)
    new_tok = stage_vocab(demo, tok, vocab_size)
    stage_embedding_training(demo, base, new_tok, train_steps)
    merged = stage_merges(demo, base, instruct)
    eval_table = stage_evaluation(demo, instruct, merged, samples)
    return stage_report(demo, tok, new_tok, eval_table)
