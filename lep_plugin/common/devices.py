"""Which torch device a command computes on: one rule for ``--device`` of ``lep-merge`` and ``lep eval``."""

from __future__ import annotations

import re

import torch

from lep_plugin.errors import LEPError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(choice: str | None) -> torch.device:
    """``auto`` (or None): the first GPU if torch sees one, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``
    (refused, in one line, when there is no such GPU)."""
    choice = choice or "auto"
    if not re.match(DEVICE_PATTERN, choice):
        raise LEPError(f"device {choice!r}: expected auto, cpu, cuda or cuda:N")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LEPError(f"device {choice!r}: torch sees no CUDA GPU here (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LEPError(f"device {choice!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a GPU (None for the CPU: the operating system decides)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
