"""Which torch device a command computes on: one rule for ``--device`` of ``lep-merge`` and ``lep eval``;
and what machine a measured figure comes from."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

from lep_plugin.errors import LEPError

if TYPE_CHECKING:  # torch loads when a device is resolved, not when the options naming one are built
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(choice: str | None) -> torch.device:
    """``auto`` (or None): the first GPU if torch sees one, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``
    (refused, in one line, when there is no such GPU)."""
    import torch

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
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def machine_description() -> dict[str, str | int]:
    """The CPU a figure was measured on (its model name and widest vector extension: results that depend
    on the BLAS kernel differ between AVX2 and AVX-512 machines), torch's threads and version."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (platform.processor(), platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    vector = next((isa for isa in ("avx512_bf16", "avx512f", "avx2") if f" {isa}" in flags), "")
    vector = {"avx512_bf16": "AVX-512 with bf16", "avx512f": "AVX-512", "avx2": "AVX2"}.get(vector, "")
    import torch

    return {"cpu": cpu, "vector": vector, "threads": torch.get_num_threads(), "torch": torch.__version__}
