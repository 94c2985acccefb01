"""Vocabulary benchmarks (issue 2), printed as ratios measured in this one run.

1. Building a 32k BPE on ../shared/data/ru/train.jsonl with the Mistral-7B tokenizer as OLD.
2. T + initialisation at 32k×4096 (Mistral OLD) and ~128k×4096 (Tekken OLD): the vectorised path
   (``vocabulary_operator`` + ``apply_operator``) against a plain per-token Python loop doing the same
   averaging (the reference implementation's approach), on the same rows.

Run: ``.venv/bin/python benchmarks/bench_vocab.py [--dim 4096]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.math.operator import apply_operator
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.operator import vocabulary_operator
from lep_plugin.vocab.options import VocabOptions

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ru" / "train.jsonl"


def per_token_loop(new_tok, old_tok, old: torch.Tensor) -> torch.Tensor:
    """The reference way: for each new token, split it with the old model and average those rows."""
    old_vocab = old_tok.get_vocab()
    model = old_tok.backend_tokenizer.model
    trained = old.norm(dim=1) > 0
    fallback = old[trained].mean(0)
    out = torch.empty(len(new_tok), old.shape[1], dtype=old.dtype)
    for token, i in new_tok.get_vocab().items():
        ids = [old_vocab[token]] if token in old_vocab else [t.id for t in model.tokenize(token)]
        ids = [j for j in ids if trained[j]]
        out[i] = old[ids].mean(0) if ids else fallback
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mistral = import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), tmp / "mistral")
        tekken = import_mistral_common_tokenizer(mistral_common_file("tekken_240718.json"), tmp / "tekken")
        corpus_chars = sum(1 for _ in open(CORPUS, encoding="utf-8"))  # warm the page cache
        _, build_s = timed(
            lambda: build_vocabulary(mistral, [CORPUS], VocabOptions(method="bpe", vocab_size=32000), tmp / "bpe32k")
        )
        print(f"build 32k BPE on {CORPUS.name} ({corpus_chars} docs): {build_s:.1f} s (goal ≤ 60 s)")
        _, tekken_build_s = timed(
            lambda: build_vocabulary(
                tekken, [CORPUS], VocabOptions(method="optimize", vocab_size=32000, keep=110000), tmp / "tk"
            )
        )
        print(f"build Tekken optimize (110k kept + 32k BPE): {tekken_build_s:.1f} s")

        for label, old_dir, new_dir in (
            ("32k (Mistral OLD)", mistral, tmp / "bpe32k"),
            ("128k (Tekken OLD)", tekken, tmp / "tk"),
        ):
            old_tok, new_tok = load_tokenizer(old_dir), load_tokenizer(new_dir)
            old = torch.randn(len(old_tok), args.dim)
            old[5:20] = 0.0  # untrained rows, as in a real base model
            (operator, t_s) = timed(lambda: vocabulary_operator(new_tok, old_tok))
            fast, init_s = timed(lambda: apply_operator(operator, old))
            slow, loop_s = timed(lambda: per_token_loop(new_tok, old_tok, old))
            torch.testing.assert_close(fast[: len(new_tok)], slow, rtol=1e-4, atol=1e-5)
            total = t_s + init_s
            print(
                f"T + init {label}: {len(new_tok):,}×{args.dim} in {total:.2f} s "
                f"(T {t_s:.2f} s, T·old {init_s:.2f} s); "
                f"per-token loop {loop_s:.2f} s; loop / vectorised = {loop_s / total:.1f}×"
            )


if __name__ == "__main__":
    main()
