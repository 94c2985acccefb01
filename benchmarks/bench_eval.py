"""Samples per second of `lep eval`'s batched greedy generation against a one-sample-at-a-time loop, on a
tiny random Mistral (d=64, 2 layers) with the real Mistral-7B tokenizer, same prompts, same run; then the
paragraph copy task with Darumeru's fixed 1,024 new tokens against the budget that fits each paragraph
(1.5x its token count): a random model never stops, like a model that loops, so this is the worst case.

    .venv/bin/python benchmarks/bench_eval.py [--samples 32] [--max-new-tokens 64] [--batch-size 16] [--paragraphs 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from lep_plugin.evaluation.evaluate import generation_budgets
from lep_plugin.evaluation.generate import greedy_generate
from lep_plugin.evaluation.tasks import copy_prompt_ids, load_copy_tasks
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)

HELDOUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ru" / "heldout.jsonl"


def tiny_model(tok):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return MistralForCausalLM(config).eval()


def timed(fn) -> tuple[float, object]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--paragraphs", type=int, default=8, help="paragraphs of the budget comparison (0: skip it)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(
            str(import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), Path(tmp) / "tok"))
        )
    model = tiny_model(tok)
    tasks = load_copy_tasks(HELDOUT, "ru", args.samples, pool_chars=300_000)
    prompts = [copy_prompt_ids(tok, s, "chat") for s in tasks.sentences]
    # The random model would stop at random EOS draws; without stop tokens both runs do the same work.
    stop: set[int] = set()
    with torch.no_grad():
        greedy_generate(model, prompts[:2], 4, stop, tok.pad_token_id, 2)  # warm-up
        t_batched, batched = timed(
            lambda: greedy_generate(model, prompts, args.max_new_tokens, stop, tok.pad_token_id, args.batch_size)
        )
        t_single, single = timed(
            lambda: [greedy_generate(model, [p], args.max_new_tokens, stop, tok.pad_token_id, 1)[0] for p in prompts]
        )
    agree = sum(a == b for a, b in zip(batched, single))
    n = len(prompts)
    print(
        f"torch threads {torch.get_num_threads()}, {n} prompts (mean {sum(map(len, prompts)) / n:.0f} tokens), "
        f"{args.max_new_tokens} new tokens each, vocab {len(tok)}"
    )
    print(f"batched (batch {args.batch_size}): {n / t_batched:8.2f} samples/s  ({t_batched:.2f} s)")
    print(f"one at a time        : {n / t_single:8.2f} samples/s  ({t_single:.2f} s)")
    print(f"speed-up: {t_single / t_batched:.2f}x; identical outputs: {agree}/{n}")
    if args.paragraphs:
        paragraph_budget(model, tok, args.paragraphs, args.batch_size)


def paragraph_budget(model, tok, samples: int, batch_size: int, cap: int = 1024, factor: float = 1.5) -> None:
    """Paragraph copy time with the fixed cap against per-paragraph budgets (what ``lep eval`` now does)."""
    paragraphs = load_copy_tasks(HELDOUT, "ru", samples, pool_chars=300_000).paragraphs
    prompts = [copy_prompt_ids(tok, p, "chat") for p in paragraphs]
    budgets = generation_budgets(tok, paragraphs, factor, cap)
    with torch.no_grad():
        t_cap, capped = timed(lambda: greedy_generate(model, prompts, cap, set(), tok.pad_token_id, batch_size))
        t_fit, fitted = timed(lambda: greedy_generate(model, prompts, budgets, set(), tok.pad_token_id, batch_size))
    same = sum(c[: len(f)] == f for c, f in zip(capped, fitted))
    print(
        f"paragraph copy, {len(prompts)} paragraphs (mean {sum(budgets) / len(budgets):.0f}-token budget): "
        f"{cap} new tokens {t_cap:.2f} s, budget {factor}x the reference {t_fit:.2f} s ({t_cap / t_fit:.1f}x faster); "
        f"budgeted outputs are prefixes of the capped ones: {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    sys.exit(main())
