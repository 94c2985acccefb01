"""Ranks and DeepSpeed ZeRO-3 partitioned parameters, for code that runs in every process of a launch.

Works before any process group exists (ranks then come from the launcher's environment) and without
DeepSpeed installed or in use (a parameter is partitioned only if DeepSpeed gave it a ``ds_id``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch


def rank() -> int:
    """Global rank, from the process group if there is one, else from the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def log_rank(message: str) -> None:
    """``[lep rank N] message`` on stdout: Axolotl reconfigures logging per module, and a multi-rank run
    is checked by what each rank says. Written through tqdm, so it lands above a training progress bar,
    not inside it."""
    from tqdm import tqdm

    tqdm.write(f"[lep rank {rank()}] {message}", file=sys.stdout)
    sys.stdout.flush()


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (a collective: all ranks call it); ``value`` itself without a
    process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def is_zero3_param(param: torch.Tensor) -> bool:
    """A parameter partitioned by DeepSpeed ZeRO-3 (its local data is a shard or empty)."""
    return hasattr(param, "ds_id")


def is_dtensor(tensor: torch.Tensor) -> bool:
    """A tensor sharded by FSDP2 (``fully_shard``) or tensor parallelism: a DTensor."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def forward_needs_all_ranks(model: torch.nn.Module) -> bool:
    """Whether a forward pass is a collective: several ranks and parameters partitioned across them
    (ZeRO-3 or FSDP), so no rank can run the model alone."""
    return world_size() > 1 and any(is_zero3_param(p) or is_dtensor(p) for p in model.parameters())


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), the tensor itself otherwise."""
    return param.full_tensor() if is_dtensor(param) else param


def full_rows(param: torch.Tensor) -> int:
    """Rows of the whole matrix, also when this rank holds only a ZeRO-3 shard of it."""
    return int(param.ds_shape[0]) if is_zero3_param(param) else int(param.shape[0])


@contextlib.contextmanager
def gathered(params: list[torch.Tensor], modifier_rank: int | None) -> Iterator[bool]:
    """Full parameters inside the block. Under ZeRO-3 they are gathered, and re-partitioned on exit from
    ``modifier_rank``'s copy; yields whether this process should write them (every process when the
    parameters are not partitioned, since each then holds its own full copy).

    One ``GatheredParameters`` per parameter: given several, DeepSpeed (0.18) starts one all-gather per
    parameter and waits only on the last (on one NCCL stream that orders them); gloo runs a group's
    collectives on several threads, so an earlier gather may still be writing when the block reads the
    parameter or rank 0 writes it – a ZeRO-3 run on CPU then started from a half-gathered embedding
    matrix whenever a rank was slow. Alone, a parameter takes DeepSpeed's blocking path."""
    if any(is_zero3_param(p) for p in params):
        import deepspeed

        with contextlib.ExitStack() as stack:
            for param in dict.fromkeys(params):  # once each (a tied matrix may be listed twice), in order
                stack.enter_context(deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank))
            yield modifier_rank is None or rank() == modifier_rank
    else:
        yield True
