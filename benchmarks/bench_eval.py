"""Samples per second of `lep eval`'s batched greedy generation against a one-sample-at-a-time loop, on a
tiny random Mistral (d=64, 2 layers) with the real Mistral-7B tokenizer, same prompts, same run.

    .venv/bin/python benchmarks/bench_eval.py [--samples 32] [--max-new-tokens 64] [--batch-size 16]
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
    config = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
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
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(import_mistral_common_tokenizer(mistral_common_file("tokenizer.model.v1"), Path(tmp) / "tok")))
    model = tiny_model(tok)
    tasks = load_copy_tasks(HELDOUT, "ru", args.samples, pool_chars=300_000)
    prompts = [copy_prompt_ids(tok, s, "chat") for s in tasks.sentences]
    # The random model would stop at random EOS draws; without stop tokens both runs do the same work.
    stop: set[int] = set()
    with torch.no_grad():
        greedy_generate(model, prompts[:2], 4, stop, tok.pad_token_id, 2)  # warm-up
        t_batched, batched = timed(lambda: greedy_generate(model, prompts, args.max_new_tokens, stop, tok.pad_token_id, args.batch_size))
        t_single, single = timed(lambda: [greedy_generate(model, [p], args.max_new_tokens, stop, tok.pad_token_id, 1)[0] for p in prompts])
    agree = sum(a == b for a, b in zip(batched, single))
    n = len(prompts)
    print(f"torch threads {torch.get_num_threads()}, {n} prompts (mean {sum(map(len, prompts)) / n:.0f} tokens), "
          f"{args.max_new_tokens} new tokens each, vocab {len(tok)}")
    print(f"batched (batch {args.batch_size}): {n / t_batched:8.2f} samples/s  ({t_batched:.2f} s)")
    print(f"one at a time        : {n / t_single:8.2f} samples/s  ({t_single:.2f} s)")
    print(f"speed-up: {t_single / t_batched:.2f}x; identical outputs: {agree}/{n}")


if __name__ == "__main__":
    sys.exit(main())
