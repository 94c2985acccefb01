"""Which reader opens a model dir: every reader says whether a dir is its kind, tried in order.

An Axolotl output dir without final weights is read from its last ``checkpoint-N``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lep_plugin.checkpoints.base import Checkpoint
from lep_plugin.checkpoints.deepspeed import DeepSpeedCheckpoint
from lep_plugin.checkpoints.safetensors import SafetensorsCheckpoint
from lep_plugin.checkpoints.torch_bin import TorchBinCheckpoint
from lep_plugin.errors import LEPError

# HF weight formats, preferred first (a dir may hold both a safetensors and a .bin copy)
HF_READERS: tuple[type[Checkpoint], ...] = (SafetensorsCheckpoint, TorchBinCheckpoint)


def checkpoint_number(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def has_hf_weights(path: Path) -> bool:
    return any(reader.detect(path) for reader in HF_READERS)


def resolve_model_dir(path: Path, what: str) -> Path:
    """The dir that holds ``what``'s weights: ``path`` itself, or for an Axolotl output dir without
    final weights, its last ``checkpoint-N``."""
    path = Path(path)
    if not path.is_dir():
        raise LEPError(f"{what} {path} is not a directory")
    if has_hf_weights(path) or DeepSpeedCheckpoint.detect(path):
        return path
    numbered = [p for p in path.glob("checkpoint-*") if p.is_dir() and checkpoint_number(p) >= 0]
    if numbered:
        return resolve_model_dir(max(numbered, key=checkpoint_number), what)
    raise LEPError(f"{what} {path} holds no model weights (no safetensors, pytorch_model*.bin or DeepSpeed checkpoint)")


def open_checkpoint(path: Path, what: str, prefer_deepspeed: bool = True) -> Checkpoint:
    """A reader for the model dir ``path`` (see :func:`resolve_model_dir`).

    A dir with a DeepSpeed checkpoint (``latest`` + ``global_stepN/``) is read from its fp32 master
    weights when ``prefer_deepspeed``: the 16-bit HF weights a trainer may save beside it are rounded
    and, under ZeRO-3 without gathering, empty. Otherwise HF weights win when there are any.
    """
    path = resolve_model_dir(path, what)
    hf = next((reader for reader in HF_READERS if reader.detect(path)), None)
    if DeepSpeedCheckpoint.detect(path) and (prefer_deepspeed or hf is None):
        if (path / "latest").is_file():
            return DeepSpeedCheckpoint(path)
        if hf is None:
            raise LEPError(
                f"{what} {path} is a DeepSpeed checkpoint dir without a `latest` file (name the tag to read)"
            )
    if hf is None:
        raise LEPError(f"{what} {path} holds no safetensors or pytorch_model*.bin weights")
    return hf(path)
