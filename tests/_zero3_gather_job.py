"""Two gloo ranks gather two ZeRO-3 partitioned matrices (embedding + lm_head sized) again and again and
count the gathers whose content is not the whole, right matrix.

Run with ``torchrun --nproc_per_node 2 _zero3_gather_job.py MODE GATHERS``; MODE ``lep`` gathers through
``lep_plugin.common.distributed.gathered``, ``deepspeed`` through one ``GatheredParameters`` over both
(DeepSpeed then waits on the last all-gather only: on gloo the first may not have finished, the race
behind issue 23's ZeRO-3 failures). Prints ``rank R: W wrong of G gathers`` on each rank.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed
import torch

from lep_plugin.common.distributed import gathered

ROWS, DIM = 34_000, 64  # the tiny Mistral's extended vocabulary: ~2M elements per matrix


def gather(params: list[torch.nn.Parameter], mode: str, modifier_rank: int | None):
    if mode == "deepspeed":
        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
    return gathered(params, modifier_rank=modifier_rank)


def main(mode: str, gathers: int) -> None:
    torch.distributed.init_process_group("gloo")
    deepspeed.comm.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 2, "zero_optimization": {"stage": 3}}):
        embed = torch.nn.Embedding(ROWS, DIM)
        head = torch.nn.Linear(DIM, ROWS, bias=False)
    params = [embed.weight, head.weight]
    expected = [torch.arange(ROWS * DIM, dtype=torch.float32).view(ROWS, DIM), torch.full((ROWS, DIM), -1.0)]
    with gathered(params, modifier_rank=0) as writes:  # the writing path the plugin's conversion takes
        if writes:
            for param, value in zip(params, expected):
                param.data.copy_(value)
    # each rank's partition holds its slice of rank 0's values (checked without gathering)
    for param, value in zip(params, expected):
        size = param.ds_tensor.numel()
        own = value.view(-1)[rank * size : (rank + 1) * size]
        assert torch.equal(param.ds_tensor.view(-1)[: own.numel()], own), f"rank {rank}: partition not written"
    wrong = 0
    for _ in range(gathers):
        with gather(params, mode, modifier_rank=None):
            wrong += not all(torch.equal(p.data, value) for p, value in zip(params, expected))
    print(f"rank {rank}: {wrong} wrong of {gathers} gathers", flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
