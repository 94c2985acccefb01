"""Process-group setup for the plugin on machines without CUDA: gloo for DeepSpeed, CPU device maps.

DeepSpeed on a machine without CUDA: Axolotl's ``prepare_optim_env`` (run right after config validation)
calls ``deepspeed.comm.init_distributed(dist_backend="nccl")`` for single-process runs, and accelerate's
``PartialState`` does the same for launched ones. Both skip their own ``init_process_group`` when
``torch.distributed`` is already initialised (DeepSpeed's ``TorchBackend`` then wraps the existing group),
so the plugin's ``register()`` – which runs before validation – initialises a gloo group first, from the
launcher's environment (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; defaults for one process).
"""

from __future__ import annotations

import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_gloo_for_cpu_deepspeed(deepspeed_config: object) -> bool:
    """Initialise a gloo process group when DeepSpeed is asked for on a machine without CUDA.

    Returns True if it initialised one. No-op with CUDA (Axolotl then sets up NCCL as usual), without a
    DeepSpeed config, or when a group already exists.
    """
    if not deepspeed_config or torch.cuda.is_available():
        return False
    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    single = "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    if single:
        # Mirrors what Axolotl forces for one process; a free port so parallel runs do not collide.
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.distributed.init_process_group(
        backend="gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"])
    )
    return True


def cpu_device_map(cfg) -> None:
    """Without CUDA, a per-rank integer ``device_map`` (Axolotl's multi-process default) becomes the CPU."""
    if torch.cuda.is_available():
        return
    device_map = cfg.get("device_map")
    if isinstance(device_map, dict) and isinstance(device_map.get(""), int):
        cfg["device_map"] = {"": "cpu"}
