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
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from lep_plugin.calibration.copy_task import CopyTaskOptions, build_copy_examples
from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.fs import write_jsonl_atomic
from lep_plugin.demo.models import train_base, train_instruct
from lep_plugin.demo.pipeline import DEMO_DATA, SHARED, _axolotl_config, _run
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import VocabOptions

REPO = Path(__file__).resolve().parents[1]

# Share of the copy examples per (text language, unit, language of the request). Half of the Russian
# texts are asked for in English, as the evaluation does and as users of an English-first model do.
# English has only the small shipped text, so its units come back with a second seed's wording.
# Russian sentences are the largest share: with 45 % of them a run's instruct model copied at 0.49, with
# about 57 % (an earlier run) at 0.81 — copying in a model this small forms or not with the mixture.
COPY_MIX = (
    ("ru", "sentence", "ru", 0.29), ("ru", "sentence", "en", 0.29), ("en", "sentence", "en", 0.22),
    ("ru", "paragraph", "ru", 0.06), ("ru", "paragraph", "en", 0.06), ("en", "paragraph", "en", 0.08),
)
UNIT_CHARS = {"sentence": (20, 300), "paragraph": (20, 700)}


def copy_mixture(texts: dict[str, list[str]], total: int) -> tuple[list[dict], Counter]:
    """About ``total`` copy chats from the training texts of each language, in COPY_MIX proportions, and
    their count per (text language, unit, request language)."""
    records: list[dict] = []
    counts: Counter = Counter()
    for seed, (lang, unit, request, share) in enumerate(COPY_MIX):
        wanted = round(total * share)
        low, high = UNIT_CHARS[unit]
        while wanted > 0:  # a small text gives fewer units than asked: take them again with another wording
            options = CopyTaskOptions(samples=wanted, seed=seed, unit=unit, language_prompts=request, min_chars=low, max_chars=high)
            examples, _ = build_copy_examples(texts[lang], options)
            records += examples
            counts[(lang, unit, request)] += len(examples)
            wanted -= len(examples)
            seed += len(COPY_MIX)
    return records, counts


def mixture_summary(counts: Counter) -> str:
    return ", ".join(f"{n} {lang} {unit}s asked in {request}" for (lang, unit, request), n in counts.items())


def goal_check(eval_json: Path) -> str:
    """The issue's goal per conversion model: Russian copy kept (≥ 90 % of the instruct model's), tokens
    per Russian character (≥ 1.4× fewer), English copy beside the instruct model's."""
    results = {r["model"]: r["texts"] for r in json.loads(eval_json.read_text(encoding="utf-8"))["results"]}
    ref = results["instruct"]
    rows = ["| model | ru copy kept | ru tokens per char vs instruct | en copy kept | goal (≥ 90 %, ≥ 1.4×) |", "| --- | ---: | ---: | ---: | --- |"]
    for name, texts in results.items():
        if name == "instruct":
            continue
        kept = texts["ru/heldout"]["sentence_copy"] / ref["ru/heldout"]["sentence_copy"]
        fewer = texts["ru/heldout"]["chars_per_token"] / ref["ru/heldout"]["chars_per_token"]
        en_kept = texts["en/heldout"]["sentence_copy"] / ref["en/heldout"]["sentence_copy"]
        met = "met" if kept >= 0.9 and fewer >= 1.4 else "not met"
        rows.append(f"| {name} | {kept:.0%} | {fewer:.2f}× fewer | {en_kept:.0%} | {met} |")
    return "\n".join(rows)


def calibrate(lep_model: Path, texts: list[str], work: Path, steps: int, seed: int | None = None) -> Path:
    """Step 5 of the method with the shipped tiny recipe: copy chats from training texts (``lep data
    copy-task``), a LoRA (plus embeddings) trained by ``axolotl train``, merged by ``axolotl merge-lora``."""
    work.mkdir(parents=True, exist_ok=True)
    copies = work / "copy.jsonl"
    _run([sys.executable, "-m", "lep_plugin.cli.lep", "data", "copy-task", *[a for t in texts for a in ("--text", t)],
          "--samples", str(steps * 2), "--output", str(copies), "--force",
          *(["--seed", str(seed)] if seed is not None else [])], work / "copy-task.log", print)
    cfg = yaml.safe_load((REPO / "examples" / "yaml" / "calibration-tiny-cpu.yml").read_text(encoding="utf-8"))
    cfg.update(base_model=str(lep_model), dataset_prepared_path=str(work / "prepared"), output_dir=str(work / "adapter"), max_steps=steps)
    if seed is not None:
        cfg["seed"] = seed
    cfg["datasets"][0]["path"] = str(copies)
    config = work / "calibration.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    axolotl = str(Path(sys.executable).parent / "axolotl")
    _run([axolotl, "train", str(config)], work / "train.log", print)
    _run([axolotl, "merge-lora", str(config), "--lora-model-dir", str(work / "adapter")], work / "merge-lora.log", print)
    merged = work / "extend-conversion-calibrated"
    if merged.exists():
        shutil.rmtree(merged)
    (work / "adapter" / "merged").rename(merged)  # a name that says what it is in the eval table
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/mini"))
    parser.add_argument("--minutes-base", type=float, default=5)
    parser.add_argument("--minutes-instruct", type=float, default=6)
    parser.add_argument("--base-russian-chars", type=int, default=3_000_000,
                        help="characters of the Russian training corpus added to the base's texts (a small corpus is memorised, and then no copy head forms)")
    parser.add_argument("--repeat", type=float, default=0.5, help="share of the base's sequences that write a passage twice")
    parser.add_argument("--shuffle-repeats", action=argparse.BooleanOptionalAction, default=False,
                        help="shuffle the tokens of a repeated passage (only copying predicts it then; measured: worse LM, no better copying)")
    parser.add_argument("--copy-examples", type=int, default=4000, help="copy chats from training texts added to the instruct mixture")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the two model trainings (0: torch's default); 1 on a machine shared with other jobs, "
                        "where more threads than free cores make each step several times slower and the time boxes give few steps")
    parser.add_argument("--calibration-steps", type=int, default=60,
                        help="steps of the calibration LoRA (the calibration LoRA of arXiv:2412.21140, §4) on the extend/conversion model; 0 skips it")
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    ru_train = [str(SHARED / "ru" / "train.jsonl")] if (SHARED / "ru" / "train.jsonl").is_file() else [str(DEMO_DATA / "ru.jsonl")]
    heldout = [str(SHARED / "ru" / "heldout.jsonl"), str(SHARED / "en" / "heldout.jsonl")] if (SHARED / "ru").is_dir() else [
        str(DEMO_DATA / "ru.jsonl"), str(DEMO_DATA / "en.jsonl")]
    times: dict[str, float] = {}

    def timed(name, fn):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - start
        return value

    tekken = timed("import Tekken (style source)", lambda: import_mistral_common_tokenizer(mistral_common_file("tekken_240718.json"), out / "tekken"))
    # English-leaning: trained on the English texts plus the first Russian documents (about 1/10)
    mix = out / "english-leaning.jsonl"
    en_lines = (DEMO_DATA / "en.jsonl").read_text(encoding="utf-8").splitlines()
    ru_lines = (DEMO_DATA / "ru.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    mix.write_text("\n".join(en_lines + ru_lines) + "\n", encoding="utf-8")
    old_tok = timed("English-leaning tokenizer", lambda: build_vocabulary(tekken, [mix], VocabOptions(method="bpe", vocab_size=3500), out / "tok-en", force=True))

    ru_more = out / "base-russian.jsonl"
    write_jsonl_atomic(({"text": t} for t in iter_texts(ru_train, max_chars=args.base_russian_chars)), ru_more, force=True)
    lm_texts = [mix, DEMO_DATA / "en.jsonl", DEMO_DATA / "ru.jsonl", ru_more]
    base = timed("base model from scratch", lambda: train_base(old_tok, lm_texts, out / "base", args.minutes_base * 60, hidden=128, layers=3,
                                                               seq=256, repeat=args.repeat, shuffle=args.shuffle_repeats, schedule=True))
    copies, counts = copy_mixture({"ru": list(iter_texts(ru_train, max_chars=1_000_000)), "en": list(iter_texts([DEMO_DATA / "en.jsonl"]))},
                          args.copy_examples) if args.copy_examples else ([], Counter())
    write_jsonl_atomic(copies, out / "instruct-copy.jsonl", force=True)
    mixture = f"{len(copies)} copy chats ({mixture_summary(counts)}) + the shipped {DEMO_DATA / 'instructions.jsonl'}"
    print("instruct mixture:", mixture)
    instruct = timed("instruct model", lambda: train_instruct(base, DEMO_DATA / "instructions.jsonl", out / "instruct", args.minutes_instruct * 60,
                                                             extra=copies, lr=2e-3, max_len=384, schedule=True))

    models = [instruct]
    for method in ("extend", "bpe"):
        tok = timed(f"{method} Russian vocabulary", lambda: build_vocabulary(
            old_tok, ru_train, VocabOptions(method=method, vocab_size=3500 if method == "bpe" else 3000, max_chars=3_000_000), out / f"tok-{method}", force=True))
        work = out / f"train-{method}"
        work.mkdir(exist_ok=True)
        cfg = _axolotl_config(work, base, tok, ru_train, args.train_steps)
        (work / "train.yml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        timed(f"{method}: axolotl train (embeddings only)", lambda: _run([str(Path(sys.executable).parent / "axolotl"), "train", str(work / "train.yml")], work / "train.log", print))
        timed(f"{method}: lep-merge all", lambda: _run([sys.executable, "-m", "lep_plugin.cli.merge", "--base", str(base), "--instruct", str(instruct),
                                                        "--adapted", str(work / "adapted"), "--method", "all", "--output", str(out / f"lep-{method}"), "--force"], work / "merge.log", print))
        models += sorted(p for p in (out / f"lep-{method}").iterdir() if (p / "config.json").is_file())
    if args.calibration_steps:
        models.append(timed("extend/conversion: calibration LoRA + merge-lora", lambda: calibrate(
            out / "lep-extend" / "conversion", ru_train, out / "calibration", args.calibration_steps)))

    text_args = [a for t in heldout for a in ("--text", t)]
    timed("lep eval (all models)", lambda: _run([sys.executable, "-m", "lep_plugin.cli.lep", "eval", *map(str, models), *text_args,
                                                 "--samples", str(args.samples), "--max-new-tokens-paragraph", "200",
                                                 "--json", str(out / "eval.json"), "--plot", str(out / "eval.png")], out / "eval.log", print))
    table = "\n".join(line for line in (out / "eval.log").read_text(encoding="utf-8").splitlines() if line.startswith("|"))
    timing = "\n".join(f"| {k} | {v:.0f} s |" for k, v in times.items())
    goal = goal_check(out / "eval.json") if (SHARED / "ru").is_dir() else "(needs the held-out corpora in ../shared/data)"
    report = (f"# Mini reproduction\n\nmodels: {', '.join(str(m) for m in models)}\n\ninstruct mixture: {mixture}\n\n{table}\n\n"
              f"## Goal of issue 5 (conversion keeps ≥ 90 % of the Russian copy score with ≥ 1.4× fewer tokens)\n\n{goal}\n\n"
              f"| stage | wall time |\n| --- | ---: |\n{timing}\n| total | {sum(times.values()):.0f} s |\n")
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(json.dumps({k: round(v, 1) for k, v in times.items()}))


if __name__ == "__main__":
    main()
