"""Samples per second of `lep eval`'s batched greedy generation against a one-sample-at-a-time loop,
on the same tiny model and prompts, in one run (issue 4).

    python benchmarks/bench_eval.py [--samples 32] [--new-tokens 64] [--batch 8]

The model is a random tiny Llama (d=128, 2 layers) with the real Mistral-7B tokenizer; generation is
forced to run ``--new-tokens`` steps (no stop token) so both ways do the same work; outputs must match.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import RU_HELDOUT, build_mistral_tokenizer, build_tiny_model, read_texts  # noqa: E402

from lep_plugin.io.eval_data import copy_prompt_ids  # noqa: E402
from lep_plugin.io.evaluate import greedy_generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = build_mistral_tokenizer(Path(tmp) / "tok")
        model_dir = build_tiny_model("llama", tok_dir, Path(tmp) / "model", hidden=128)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
    sentences = [s for t in read_texts(RU_HELDOUT, 40) for s in t.split(". ") if 40 < len(s) < 200][: args.samples]
    prompts = [copy_prompt_ids(tok, s, "chat") for s in sentences]
    with torch.no_grad():
        start = time.perf_counter()
        batched = greedy_generate(model, prompts, args.new_tokens, frozenset(), tok.eos_token_id, batch_size=args.batch)
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        single = [greedy_generate(model, [p], args.new_tokens, frozenset(), tok.eos_token_id, batch_size=1)[0] for p in prompts]
        single_s = time.perf_counter() - start
    agree = sum(a == b for a, b in zip(batched, single))
    print(f"{len(prompts)} prompts × {args.new_tokens} new tokens, tiny Llama d=128 with a 32k vocabulary, CPU")
    print(f"batched (batch {args.batch}): {len(prompts) / batched_s:.1f} samples/s; one at a time: {len(prompts) / single_s:.1f} samples/s")
    print(f"speed-up {single_s / batched_s:.1f}×; identical outputs for {agree}/{len(prompts)} prompts")


if __name__ == "__main__":
    main()
