"""A CPU-sized analogue of the paper's experiment (issue 5), from one command:

    python benchmarks/mini_reproduction.py [--output out/mini] [--minutes-base 4] [--minutes-instruct 4]

1. an English-leaning byte-level tokenizer (BPE trained on the shipped English texts plus a little
   Russian, in the Tekken/Llama-3 style), so Russian splits into short pieces as in the real models;
2. base: a small Llama trained from scratch on mostly English with some Russian;
3. instruct: the base fine-tuned on chat instructions (the shipped copy and simple transformations, both
   languages) plus copy-instruction chats made by `lep data copy-task`'s builder from *training* texts
   (never the held-out files), so that the instruct model really copies and the copy scores can show
   what LEP keeps; the base's texts repeat a passage in some sequences so that induction (copy) heads form;
4. Russian vocabularies (`extend` and `bpe`), embedding-only `axolotl train` of the base with the plugin;
5. `lep-merge --method all` (swap / overlap / conversion) for each vocabulary;
6. `lep eval` of every model: chars/token, bits/char, Russian and English copy scores, and the wall time
   of each stage. Figures are printed and written to OUTPUT/report.md, whatever they show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from lep_plugin.demo.models import train_base, train_instruct
from lep_plugin.demo.pipeline import DEMO_DATA, SHARED, _axolotl_config, _run
from lep_plugin.io.tokenizers import import_mistral_common_tokenizer, mistral_common_file
from lep_plugin.io.vocab import VocabOptions, build_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/mini"))
    parser.add_argument("--minutes-base", type=float, default=4)
    parser.add_argument("--minutes-instruct", type=float, default=4)
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
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
    lm_texts = [mix, DEMO_DATA / "en.jsonl", DEMO_DATA / "ru.jsonl"]
    base = timed("base model from scratch", lambda: train_base(old_tok, lm_texts, out / "base", args.minutes_base * 60, hidden=128, layers=3))
    instruct = timed("instruct model", lambda: train_instruct(base, DEMO_DATA / "instructions.jsonl", out / "instruct", args.minutes_instruct * 60))

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

    text_args = [a for t in heldout for a in ("--text", t)]
    timed("lep eval (all models)", lambda: _run([sys.executable, "-m", "lep_plugin.cli.lep", "eval", *map(str, models), *text_args,
                                                 "--samples", str(args.samples), "--max-new-tokens-paragraph", "200",
                                                 "--json", str(out / "eval.json"), "--plot", str(out / "eval.png")], out / "eval.log", print))
    table = "\n".join(line for line in (out / "eval.log").read_text(encoding="utf-8").splitlines() if line.startswith("|"))
    timing = "\n".join(f"| {k} | {v:.0f} s |" for k, v in times.items())
    report = f"# Mini reproduction\n\nmodels: {', '.join(str(m) for m in models)}\n\n{table}\n\n| stage | wall time |\n| --- | ---: |\n{timing}\n"
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(json.dumps({k: round(v, 1) for k, v in times.items()}))


if __name__ == "__main__":
    main()
