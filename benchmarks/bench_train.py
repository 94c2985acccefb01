"""Step time, peak memory and optimizer state of ``lep.train: embeddings`` against a full fine-tune and
LoRA with ``modules_to_save: [embed_tokens, lm_head]``, on one tiny-but-not-trivial Llama (4 layers,
d=256, vocab 32k). Same loop the HF Trainer runs (forward, loss, backward, clip, AdamW step, zero_grad);
each mode runs in its own process so that peak memory (max RSS on CPU, max allocated on CUDA) is its own.

    python benchmarks/bench_train.py [--steps 20] [--batch 4] [--seq 256] [--device cpu]

Prints one table and the ratios against the full fine-tune. Goal: embeddings step ≤ 0.8× full, and the
optimizer state covers exactly the embedding parameters.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("full", "embeddings", "lora")


def build_model(
    vocab: int,
    hidden: int,
    layers: int,
    heads: int = 4,
    kv_heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 1024,
):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def prepare(model, mode: str):
    if mode == "embeddings":
        from lep_plugin.plugin.freezing import freeze_all_but_embeddings

        freeze_all_but_embeddings(model)
    elif mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            modules_to_save=["embed_tokens", "lm_head"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def run_mode(mode: str, args: dict, queue) -> None:
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    shape = {k: args[k] for k in ("heads", "kv_heads", "intermediate") if k in args}
    model = build_model(args["vocab"], args["hidden"], args["layers"], max_positions=max(1024, args["seq"]), **shape)
    model = prepare(model.to(getattr(torch, args.get("dtype", "float32"))), mode).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, args["vocab"], (args["batch"], args["seq"]), generator=generator).to(device) for _ in range(4)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args["warmup"] + args["steps"]):
        ids = batches[step % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args["warmup"]:
            times.append(time.perf_counter() - start)
    state_elements = sum(
        t.numel() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()
    )
    embedding_elements = sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and ("embed_tokens" in n or "lm_head" in n)
    )
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put(
        {
            "mode": mode,
            "step_s": statistics.median(times),
            "peak_mib": peak,
            "trainable": sum(p.numel() for p in params),
            "embedding_trainable": embedding_elements,
            "optimizer_state": state_elements,
            "total": sum(p.numel() for p in model.parameters()),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = vars(parser.parse_args())

    context = mp.get_context("spawn")
    results = {}
    for mode in MODES:
        queue = context.Queue()
        process = context.Process(target=run_mode, args=(mode, args, queue))
        process.start()
        results[mode] = queue.get()
        process.join()

    full = results["full"]
    print(
        f"Llama {args['layers']} layers, d={args['hidden']}, vocab {args['vocab']}, "
        f"batch {args['batch']}×{args['seq']}, "
        f"{args['steps']} steps on {args['device']} (peak memory: "
        f"{'max allocated' if args['device'].startswith('cuda') else 'max RSS of the process'})"
    )
    print(
        f"{'mode':<11} {'step ms':>8} {'×full':>6} {'peak MiB':>9} {'×full':>6} {'trainable':>11} {'optim state':>12}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<11} {r['step_s'] * 1e3:8.1f} {r['step_s'] / full['step_s']:6.2f} {r['peak_mib']:9.0f} "
            f"{r['peak_mib'] / full['peak_mib']:6.2f} {r['trainable']:11,d} {r['optimizer_state']:12,d}"
        )
    emb = results["embeddings"]
    only_embeddings = emb["optimizer_state"] == 2 * emb["embedding_trainable"] == 2 * emb["trainable"]
    print(
        f"embeddings/full step time {emb['step_s'] / full['step_s']:.2f} (goal ≤ 0.80); "
        f"optimizer state = 2 × embedding params only: {only_embeddings}"
    )
    print(f"embeddings/lora step time {emb['step_s'] / results['lora']['step_s']:.2f}")
    if args["json"]:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
