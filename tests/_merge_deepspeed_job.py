"""Train a tiny HF model for two steps under DeepSpeed ZeRO on CPU (gloo) and save a real checkpoint.

Run as ``python _merge_deepspeed_job.py MODEL_DIR OUT_DIR STAGE`` (one process: world size 1), or
through ``deepspeed``/``torchrun`` launchers for more ranks (RANK/WORLD_SIZE from the environment).
Like LEP's embedding training, only the embedding and lm_head are trainable.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")
os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")


def main(model_dir: str, out_dir: str, stage: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": int(stage)},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    # ZeRO-3 partitions the parameters inside deepspeed.initialize (zero.Init is for models too big to load)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for name, param in model.named_parameters():
        param.requires_grad = "embed_tokens" in name or "lm_head" in name
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, model_parameters=params)
    for _ in range(2):
        ids = torch.randint(0, 1000, (1, 16))
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        # ZeRO-1/2 all-gather the updated 16-bit partitions in place into views of one flat tensor; with
        # more than one rank, torch >= 2.10 refuses that under grad mode (the step needs no autograd)
        with torch.no_grad():
            engine.step()
    engine.save_checkpoint(out_dir)
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
