"""The demo pipeline: every stage of the method, for real, on the CPU, into one output folder.

the pretrained tiny base (shipped, ``lep_plugin/data/tiny-base``: it copies in context) + its instruct
version (the instruction step, trained here) → ``lep vocab build`` → ``axolotl train`` with the plugin
(embedding-only) → ``lep-merge --method all`` → ``lep eval`` original instruct vs the three LEP models
→ ``report.md``, ``eval.png``, ``summary.json``. The CLIs run as subprocesses, exactly as a user would run them.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.fs import atomic_output_dir, read_json, write_json
from lep_plugin.common.processes import run_logged
from lep_plugin.demo.models import make_instruct, relative_changes, repeat_losses
from lep_plugin.demo.paths import DEMO_DATA, TINY_BASE
from lep_plugin.demo.pretrain import english_texts
from lep_plugin.demo.repetition import RepetitionOptions, write_repetition_corpus
from lep_plugin.evaluation.report import markdown_table as eval_markdown_table
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.options import VocabOptions
from lep_plugin.vocab.report import markdown_table, report

# the embedding training's texts: windows, every one with a passage written again. New tokens start as means
# of their pieces' rows, which the base's copy heads cannot tell from the pieces; copy-heavy text teaches them
# to those heads fastest (README, "What `make demo` does"; measured: held-out repeat-loss ratio of the adapted
# base after 300 steps 0.73 with half the windows repeating, 0.65 with all)
REPETITION = RepetitionOptions(share=1.0)


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
    "the pretrained tiny base (shipped) and its instruct version (instruction step, trained now)",
    "lep vocab build: extend the base's English-leaning vocabulary with a Russian BPE",
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
    facts: dict = field(default_factory=dict)

    def stage(self, name: str) -> None:
        self.started[name] = time.perf_counter()
        self.echo(f"[{len(self.started)}/{len(STAGES)}] {name}")


def instruction_texts(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Documents the instruction step's copy chats are cut from: the target-language training text (its
    first million characters) and the base's English training text, never the held-out files."""
    return {
        "ru": list(iter_texts(texts["target"], max_chars=1_000_000)),
        "en": english_texts(),
    }


def pretrained_pair(output: Path, instruct_seconds: float, force: bool = False, log=print) -> str:
    """``lep tiny``'s default: ``output/base`` (the shipped pretrained base, which copies in context) and
    ``output/instruct`` (its instruction step, trained now), written atomically; returns a one-line summary."""
    texts = corpora(())
    with atomic_output_dir(output, force) as tmp:
        shutil.copytree(TINY_BASE, tmp / "base")
        history: dict = {}
        make_instruct(tmp / "base", tmp / "instruct", instruct_seconds, instruction_texts(texts), log, history=history)
        losses = repeat_losses(tmp / "base", iter_texts([texts["heldout"][0]]))
    return (
        f"wrote {output}/base and {output}/instruct: the pretrained tiny base shipped with lep-plugin (2-layer "
        f"Llama, d=256, English-leaning byte-level BPE; repeat-loss ratio {losses['ratio']:.2f} on held-out "
        f"Russian: it copies in context) and its instruct version ({history.get('steps')} steps of chat "
        "instructions and copy chats)"
    )


def stage_models(demo: Demo, instruct_seconds: float) -> tuple[Path, Path, Path]:
    """The shipped pretrained base (its tokenizer is the old vocabulary) and its instruct version, trained
    now: (tokenizer, base, instruct)."""
    demo.stage(STAGES[0])
    output, base = demo.output, TINY_BASE
    history: dict = {}
    instruct = make_instruct(
        base, output / "instruct", instruct_seconds, instruction_texts(demo.texts), demo.echo, history=history
    )
    demo.facts["instruct_step"] = history | {"moved": relative_changes(base, instruct)}
    heldout = [Path(demo.texts["heldout"][0])]
    for name, model_dir in (("base", base), ("instruct", instruct)):
        demo.repeat_losses[name] = repeat_losses(model_dir, iter_texts(heldout))
    demo.echo(f"  repeat-loss ratio (held-out passage written again / first occurrence): {demo.repeat_losses}")
    demo.echo(f"  the instruction step moved (relative to each part's norm): {demo.facts['instruct_step']['moved']}")
    return base, base, instruct


def stage_vocab(demo: Demo, tok: Path, vocab_size: int) -> Path:
    demo.stage(STAGES[1])
    options = VocabOptions(method="extend", vocab_size=vocab_size, max_chars=3_000_000)
    return build_vocabulary(tok, demo.texts["target"], options, demo.output / "tokenizer-extend", force=True)


def stage_embedding_training(demo: Demo, base: Path, new_tok: Path, train_steps: int) -> None:
    demo.stage(STAGES[2])
    output = demo.output
    config = output / "train.yml"
    # windows with repeated passages: the new embeddings must serve the base's copy heads (REPETITION)
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
    summary = strict_copy_summary(records) | {
        "base": {"repeat_loss_ratio": demo.repeat_losses["base"]["ratio"], "path": str(TINY_BASE)},
        "instruct_step": demo.facts.get("instruct_step", {}),
    }
    write_json(output / "summary.json", summary)
    return eval_markdown_table(records)


def strict_copy_summary(records: list[dict]) -> dict:
    """What the demo shows in numbers: the strict Russian sentence copy score (character similarity) of
    the instruct model, its chance level, and each LEP model's (records: ``lep eval --json``'s results,
    the instruct model first; the first held-out text is the Russian one)."""
    label = next(iter(records[0]["texts"]))
    instruct = records[0]["texts"][label]
    above = instruct["sentence_strict"] - instruct["chance"]["sentence_strict"]

    def retention(record: dict) -> float | None:
        """(model − its chance) / (instruct − chance): the share of the instruct model's skill above chance kept
        (null when the instruct model itself is not above chance)."""
        scores = record["texts"][label]
        return (scores["sentence_strict"] - scores["chance"]["sentence_strict"]) / above if above > 0 else None

    return {
        "text": label,
        "instruct": {"ru_strict": instruct["sentence_strict"]},
        "chance": {"ru_strict": instruct["chance"]["sentence_strict"]},
        "methods": {r["model"]: {"ru_strict": r["texts"][label]["sentence_strict"]} for r in records[1:]},
        "retention": {r["model"]: {"ru_strict": retention(r)} for r in records[1:]},
    }


def premise_lines(demo: Demo) -> str:
    """LEP's premise in numbers: the base copies before any instruction step, and the step moved it little."""
    losses, moved = demo.repeat_losses, demo.facts["instruct_step"]["moved"]
    return (
        f"Copying in context before any instruction step (LEP's premise): the shipped base's loss on a held-out "
        f"passage written again is {losses['base']['ratio']:.2f} of its loss on the first occurrence (instruct: "
        f"{losses['instruct']['ratio']:.2f}; 1.00 = no copying). The instruction step "
        f"({demo.facts['instruct_step'].get('steps')} steps) moved the input embeddings by "
        f"{moved['input_change']:.1%}, the output embeddings by {moved['output_change']:.1%} and the transformer "
        f"body by {moved['body_change']:.1%} of their norms."
    )


def retention_line(summary: dict) -> str:
    """What each LEP model keeps of the instruct model's Russian copy skill above chance."""
    kept = ", ".join(
        f"{model.rsplit('/', 1)[-1]} {value['ru_strict']:.0%}" if value["ru_strict"] is not None else f"{model} –"
        for model, value in summary["retention"].items()
    )
    return (
        f"Russian sentence copy, strict: instruct {summary['instruct']['ru_strict']:.3f} (chance "
        f"{summary['chance']['ru_strict']:.3f}); kept above chance, (model − chance) / (instruct − chance): {kept}."
    )


def stage_report(demo: Demo, tok: Path, new_tok: Path, eval_table: str) -> str:
    """OUTPUT/report.md: the evaluation, the tokenization of both vocabularies, the wall time per stage."""
    demo.stage(STAGES[5])
    vocab_table = markdown_table(report([tok, new_tok], demo.texts["heldout"]))
    ends = list(demo.started.values())[1:] + [time.perf_counter()]
    timing = "\n".join(f"| {name} | {end - start:.0f} s |" for (name, start), end in zip(demo.started.items(), ends))
    text = (
        "# LEP demo report\n\n## Evaluation (original instruct model vs its LEP versions)\n\n"
        + premise_lines(demo)
        + "\n\n"
        + eval_table
        + "\n\n"
        + retention_line(read_json(demo.output / "summary.json", "demo summary"))
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
    instruct_seconds: float = 90,
    train_steps: int = 300,
    samples: int = 24,
) -> str:
    """Every stage of the method into ``output``; the report's text."""
    output.mkdir(parents=True, exist_ok=True)
    demo = Demo(output, corpora(corpus), echo)
    tok, base, instruct = stage_models(demo, instruct_seconds)
    new_tok = stage_vocab(demo, tok, vocab_size)
    stage_embedding_training(demo, base, new_tok, train_steps)
    merged = stage_merges(demo, base, instruct)
    eval_table = stage_evaluation(demo, instruct, merged, samples)
    return stage_report(demo, tok, new_tok, eval_table)
