"""Process-group setup for the plugin on machines without CUDA: gloo for DeepSpeed, CPU device maps.

DeepSpeed on a machine without CUDA: Axolotl's ``prepare_optim_env`` (run right after config validation)
calls ``deepspeed.comm.init_distributed(dist_backend="nccl")`` for single-process runs, and accelerate's
``PartialState`` does the same for launched ones. Both skip their own ``init_process_group`` when
``torch.distributed`` is already initialised (DeepSpeed's ``TorchBackend`` then wraps the existing group),
so the plugin's ``register()`` – which runs before validation – initialises a gloo group first, from the
launcher's environment (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; defaults for one process).

Several ranks need more. accelerate picks a process-group backend for a launched rank only when it
finds an accelerator or is told ``cpu``; without CUDA it sets none and counts the launch as *one*
process, and every ``PartialState`` it (re)creates – the Trainer and Axolotl reset it twice – says so:
DDP then wraps nothing and each rank trains alone on all the data, and DeepSpeed's ``train_batch_size:
auto`` is filled for one process (DeepSpeed stops: ``2 != 2 * 1 * 2``). :func:`cpu_ranks_for_accelerate`
makes accelerate treat a launched rank without CUDA as a CPU rank (``MULTI_CPU`` over gloo: the right
rank, world size and data shard; DeepSpeed on top when asked for).
And gloo's ``all_gather_into_tensor`` writes into views of a split tensor, which autograd refuses while
grad mode is on (torch ≥ 2.13): accelerate calls ``engine.step()`` – ZeRO's parameter all-gather – right
after ``backward``, so :class:`NoGradStepCallback` runs the engine's step under ``no_grad`` (an optimizer
step never needs autograd).
"""

from __future__ import annotations

import os
import socket

import torch
from transformers import TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

# transformers' own check, taken when the plugin is imported (in register(), before any model loads)
ZERO3_CHECK = is_deepspeed_zero3_enabled


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_gloo_for_cpu_deepspeed(cfg: dict) -> bool:
    """Initialise a gloo process group when DeepSpeed is asked for on a machine without CUDA (``cfg`` is
    the raw YAML dict of ``register()``).

    Returns True if it initialised one. No-op with CUDA (Axolotl then sets up NCCL as usual), without a
    DeepSpeed config, or when a group already exists.
    """
    if not cfg.get("deepspeed") or torch.cuda.is_available():
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


def cpu_ranks_for_accelerate() -> bool:
    """Without CUDA, in a launch of several ranks: where accelerate finds no backend for a rank (no
    accelerator of any kind), it chooses as for ``cpu=True``: gloo, ``MULTI_CPU``.

    Wraps ``PartialState._prepare_backend`` (the one place accelerate decides it) in this process;
    returns True if it did. No-op with CUDA or for one process. Idempotent.
    """
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from accelerate.state import PartialState

    original = PartialState._prepare_backend
    if getattr(original, "_lep_cpu_ranks", False):
        return True

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        chosen = original(self, cpu, sagemaker_dp, backend)
        if chosen[0] is None and not cpu:  # nothing found for a launched rank: it is a CPU rank
            return original(self, True, sagemaker_dp, backend)
        return chosen

    prepare_backend._lep_cpu_ranks = True
    PartialState._prepare_backend = prepare_backend
    # accelerate names a CPU rank's device "cpu:0", which torch.load's map_location does not know: a
    # resumed run then cannot read its optimizer state. Plain "cpu", as one process has.
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    return True


def cpu_device_map(cfg) -> None:
    """Without CUDA, a per-rank integer ``device_map`` (Axolotl's multi-process default) becomes the CPU."""
    if torch.cuda.is_available():
        return
    device_map = cfg.get("device_map")
    if isinstance(device_map, dict) and isinstance(device_map.get(""), int):
        cfg["device_map"] = {"": "cpu"}


class NoGradStepCallback(TrainerCallback):
    """Runs the DeepSpeed engine's ``step`` under ``torch.no_grad`` (multi-rank DeepSpeed over gloo)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        engine = getattr(self.trainer, "deepspeed", None)  # set by the Trainer once DeepSpeed wrapped the model
        if engine is not None and not getattr(engine.step, "_lep_no_grad", False):
            step = torch.no_grad()(engine.step)
            step._lep_no_grad = True  # idempotent: a resumed or repeated train() wraps once
            engine.step = step
        return control


def leave_training_state() -> None:
    """Forget the run's DeepSpeed state before work in the same process that is not training
    (``lep.propagate`` after ``axolotl train``): transformers still holds the run's DeepSpeed config, and
    Axolotl's ZeRO-3 loader replaced transformers' ZeRO-3 check by ``lambda: True``
    (``axolotl/loaders/model.py``), so ``from_config`` and ``from_pretrained`` would build every model
    partitioned through DeepSpeed, rendezvousing with ranks that have left. accelerate's state stays: a fresh
    one would rendezvous too."""
    import transformers.modeling_utils
    from transformers.integrations import deepspeed as hf_deepspeed

    hf_deepspeed.unset_hf_deepspeed_config()
    for module in (hf_deepspeed, transformers.modeling_utils):
        module.is_deepspeed_zero3_enabled = ZERO3_CHECK
