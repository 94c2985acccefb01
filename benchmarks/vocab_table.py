"""The README's vocabulary table: every method on the real Mistral-7B v0.1 and Tekken tokenizers, built on
../shared/data/ru/train.jsonl, reported on the Russian and English held-out texts (issue 29).

For each vocabulary: characters per token (ru, en), Russian words in ≥ 3 pieces, English words tokenized
differently from the old tokenizer, and unreachable tokens (whose own text does not tokenize to them); and
the build time of ``extend`` against its ``keep_old_tokenization: false`` variant, as a ratio.

Run: ``.venv/bin/python benchmarks/vocab_table.py [--vocab-size 32000] [--max-chars N]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

from lep_plugin.common.devices import machine_description
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import import_mistral_common_tokenizer, mistral_common_file
from lep_plugin.vocab.options import VocabOptions
from lep_plugin.vocab.report import report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OLD = {
    "Mistral-7B v0.1 (SentencePiece)": ("tokenizer.model.v1", 16000),
    "Tekken (131k byte-level)": ("tekken_240718.json", 64000),
}


def variants(size: int, keep: int, max_chars: int | None) -> dict[str, VocabOptions]:
    common = {"vocab_size": size, "max_chars": max_chars}
    k = f"{size // 1000}k"
    return {
        f"`bpe` {k}": VocabOptions(method="bpe", **common),
        f"`extend` {k}": VocabOptions(method="extend", **common),
        f"`extend` {k}, new merges first": VocabOptions(method="extend", keep_old_tokenization=False, **common),
        f"`optimize` keep {keep // 1000}k + {k}": VocabOptions(method="optimize", keep=keep, **common),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--max-chars", type=int, default=None)
    args = parser.parse_args()
    ru, en = DATA / "ru" / "heldout.jsonl", DATA / "en" / "heldout.jsonl"
    machine = machine_description()
    print(f"{date.today()}, {machine['cpu']} ({machine['vector']}), corpus {DATA / 'ru' / 'train.jsonl'}")
    print(
        "| OLD | method | vocab | ru chars/token | en chars/token | ru words in ≥3 pieces | en words tokenized "
        "differently | unreachable tokens |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (source, keep) in OLD.items():
            old = import_mistral_common_tokenizer(mistral_common_file(source), Path(tmp) / source)
            built, seconds = {"original": old}, {}
            for k, (label, options) in enumerate(variants(args.vocab_size, keep, args.max_chars).items()):
                start = time.perf_counter()
                built[label] = build_vocabulary(
                    old, [DATA / "ru" / "train.jsonl"], options, Path(tmp) / f"{source}-{k}"
                )
                seconds[label] = time.perf_counter() - start
            rows = report([old] + [d for d in built.values() if d != old], [ru, en])
            for k, label in enumerate(built):
                r_ru, r_en = rows[2 * k], rows[2 * k + 1]
                changed = "–" if r_en.words_changed is None else f"{r_en.words_changed:.2%}"
                print(
                    f"| {name if k == 0 else ''} | {label} | {r_ru.vocab_size:,} | {r_ru.chars_per_token:.3f} | "
                    f"{r_en.chars_per_token:.3f} | {r_ru.split_words_3plus:.1%} | {changed} | {r_ru.unreachable:,} |"
                )
            ext = [label for label in seconds if label.startswith("`extend`")]
            print(
                f"<!-- {name}: build {ext[0]} {seconds[ext[0]]:.0f} s, {ext[1]} {seconds[ext[1]]:.0f} s: "
                f"{seconds[ext[0]] / seconds[ext[1]]:.1f}× -->"
            )


if __name__ == "__main__":
    main()
