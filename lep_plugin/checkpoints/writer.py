"""Writing a model dir that changes only a few tensors of a checkpoint, with only those tensors in memory.

A safetensors source keeps its sharding: shards without a changed tensor are copied byte for byte, the
others are rewritten by streaming. Any other source (``.bin``, DeepSpeed) is written group by group
(:meth:`Checkpoint.groups`) into new safetensors shards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.base import Checkpoint
from lep_plugin.checkpoints.safetensors import (
    INDEX,
    SINGLE,
    SafetensorsCheckpoint,
    rewrite_safetensors,
)
from lep_plugin.errors import LEPError

Replacement = torch.Tensor | Callable[[], torch.Tensor]
Progress = Callable[[int], None] | None


def write_weights(
    source: Checkpoint, output: Path, replacements: dict[str, Replacement], progress: Progress = None
) -> dict[str, Any]:
    """Write ``source``'s tensors into ``output`` as safetensors, with ``replacements`` swapped in.

    A replacement may be a loader (called when its shard is written). Returns a summary
    ``{"copied": [shard names], "rewritten": [shard names], "bytes": N}``.
    """
    unknown = [n for n in replacements if n not in source.names()]
    if unknown:
        raise LEPError(f"{source.path} has no tensor {unknown[0]} to replace")
    if isinstance(source, SafetensorsCheckpoint):
        summary, weight_map, single = _keep_shards(source, output, replacements, progress)
    else:
        summary, weight_map, single = _new_shards(source, output, replacements, progress)
    if not single:
        index = {"metadata": {"total_size": summary["bytes"]}, "weight_map": dict(sorted(weight_map.items()))}
        (output / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return summary


def _keep_shards(source: SafetensorsCheckpoint, output: Path, replacements, progress):
    summary: dict[str, Any] = {"copied": [], "rewritten": [], "bytes": 0}
    weight_map: dict[str, str] = {}
    for shard in source.shards:
        names = [n for n, s in source.weight_map.items() if s == shard]
        dst = output / shard.name
        changed = {n: _materialise(replacements[n]) for n in names if n in replacements}
        if changed:
            summary["bytes"] += rewrite_safetensors(shard, dst, changed)
            summary["rewritten"].append(shard.name)
        else:
            shutil.copyfile(shard, dst)
            summary["bytes"] += sum(source.tensor_bytes(n) for n in names)
            summary["copied"].append(shard.name)
        weight_map.update({n: shard.name for n in names})
        if progress:
            progress(dst.stat().st_size)
    return summary, weight_map, not source.sharded


def _new_shards(source: Checkpoint, output: Path, replacements, progress):
    from safetensors.torch import save_file

    summary: dict[str, Any] = {"copied": [], "rewritten": [], "bytes": 0}
    weight_map: dict[str, str] = {}
    groups = [g for g in source.groups() if g]
    for i, names in enumerate(groups, 1):
        state = source.get_many(names)
        state = {n: (_materialise(replacements[n]) if n in replacements else state[n]).contiguous() for n in names}
        state = _untie_storage(state)
        name = SINGLE if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(state, str(output / name), metadata={"format": "pt"})
        summary["bytes"] += sum(t.numel() * t.element_size() for t in state.values())
        summary["rewritten"].append(name)
        weight_map.update({n: name for n in state})
        del state
        if progress:
            progress((output / name).stat().st_size)
    return summary, weight_map, len(groups) == 1


def _materialise(value: Replacement) -> torch.Tensor:
    # a replacement may be a loader, so that it is read only when its shard is written
    return value() if callable(value) else value


def _untie_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory (tied weights in a .bin); give each its own copy
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out
