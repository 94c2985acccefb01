"""One rank of the FSDP2 check (tests/test_fsdp.py), launched by ``torchrun --nproc_per_node 2`` on CPU.

The plugin's hooks in Axolotl's order on a tiny model, then torch's own ``fully_shard`` over a CPU
device mesh (gloo) as accelerate applies it after the Trainer is built, a few AdamW steps with the
plugin's callbacks, and the full (unsharded) state dict written by rank 0:

    python -m torch.distributed.run --nproc_per_node 2 _fsdp_job.py CONFIG.json OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from lep_plugin.checkpoints.model_config import embedding_parameters
from lep_plugin.common.distributed import is_dtensor
from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.plugin.plugin import LEPPlugin


def main(config_file: str, output: str) -> None:
    cfg = json.loads(Path(config_file).read_text(encoding="utf-8"))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plugin = LEPPlugin()
    plugin.register(cfg)  # builds (rank 0 or whoever locks first) or reuses the vocabulary
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model"], dtype=torch.float32)
    plugin.post_model_build(cfg, model)
    plugin.post_model_load(cfg, model)
    trainer = SimpleNamespace(model=model, processing_class=load_tokenizer(cfg["tokenizer_config"]))
    callbacks = plugin.add_callbacks_post_trainer(cfg, trainer)
    if cfg.get("control_without_callbacks"):  # the control run: what the tensor hooks alone would do
        callbacks = []
    plugin.post_trainer_create(cfg, trainer)

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert all(is_dtensor(p) for p in embedding_parameters(model)), "fully_shard left a plain embedding"

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg["learning_rate"], weight_decay=0.0
    )
    torch.manual_seed(1234 + rank)  # each rank its own batch, as a sharded data loader gives
    tok = trainer.processing_class
    args = SimpleNamespace()
    state = SimpleNamespace(global_step=0)
    texts = [
        json.loads(line)["text"]
        for line in Path(cfg["datasets"][0]["path"]).read_text(encoding="utf-8").splitlines()[:8]
    ]
    for step in range(cfg["max_steps"]):
        text = texts[(2 * step + rank) % len(texts)]
        ids = tok(text, return_tensors="pt", truncation=True, max_length=64)["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for callback in callbacks:
            callback.on_pre_optimizer_step(args, state, None, model=model)
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()}, str(out / "model.safetensors"))
        model.config.save_pretrained(out)
        tok.save_pretrained(out)
        print(f"rank 0 wrote {len(full)} tensors", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
