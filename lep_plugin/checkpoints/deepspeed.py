"""Reading single tensors (the embedding and lm_head) from a DeepSpeed ZeRO-1/2/3 checkpoint dir.

A dir with ``latest`` names a tag dir (``global_stepN/``) holding, per data-parallel rank, a model
states file (parameter names and shapes, frozen parameter fragments) and an optimizer states file (the
flat fp32 master partitions). A parameter is rebuilt from the slices of those partitions that hold it,
following DeepSpeed's layout (``deepspeed.utils.zero_to_fp32``): ZeRO-1/2 put each parameter group's
flat vector in consecutive rank partitions; ZeRO-3 gives every rank ``ceil(numel / world)`` elements of
every parameter. The files are memory-mapped, so only the bytes of the requested tensors are read.

The files are pickles that also hold a few DeepSpeed objects (loss scaler, stage enum, fragment
addresses): they are loaded with ``torch.load(weights_only=True)`` and exactly those classes allowed,
so no other object can be built from the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from lep_plugin.checkpoints.base import Checkpoint, load_weights_only
from lep_plugin.errors import LEPError


def _safe_globals() -> list:
    """The non-tensor classes DeepSpeed writes into its checkpoint pickles."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, set]


def safe_load(path: Path) -> dict:
    return load_weights_only(path, "a DeepSpeed checkpoint file", _safe_globals())


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _slice(chunks: list[torch.Tensor], start: int, stop: int) -> list[torch.Tensor]:
    """Elements [start, stop) of the concatenation of ``chunks``, without concatenating them."""
    out, base = [], 0
    for chunk in chunks:
        n = chunk.numel()
        lo, hi = max(start, base), min(stop, base + n)
        if lo < hi:
            out.append(chunk.reshape(-1)[lo - base : hi - base])
        base += n
        if base >= stop:
            break
    return out


class DeepSpeedCheckpoint(Checkpoint):
    kind = "deepspeed"

    @staticmethod
    def detect(path: Path) -> bool:
        return (Path(path) / "latest").is_file() or any(p.is_dir() for p in Path(path).glob("global_step*"))

    def __init__(self, path: Path, tag: str | None = None):
        from deepspeed.checkpoint import constants as C

        self.path = Path(path)
        if tag is None:
            latest = self.path / "latest"
            if not latest.is_file():
                raise LEPError(f"DeepSpeed checkpoint dir {self.path} has no `latest` file")
            tag = latest.read_text().strip()
        self.tag_dir = (self.path / tag).resolve()
        if not self.tag_dir.is_relative_to(self.path.resolve()) or not self.tag_dir.is_dir():
            raise LEPError(f"`latest` in {self.path} names {tag!r}, which is not a checkpoint dir inside it")
        optim_files = sorted(self.tag_dir.glob("*_optim_states.pt"), key=_natural)
        model_files = sorted(self.tag_dir.glob("*_model_states.pt"), key=_natural)
        if not optim_files or not model_files:
            raise LEPError(f"{self.tag_dir} lacks DeepSpeed model/optimizer state files")
        optim = [safe_load(f)[C.OPTIMIZER_STATE_DICT] for f in optim_files]
        if C.ZERO_STAGE not in optim[0]:
            raise LEPError(f"{optim_files[0]} is not a ZeRO checkpoint")
        self.stage = int(optim[0][C.ZERO_STAGE])
        world = optim[0][C.PARTITION_COUNT]
        self.world = max(world) if isinstance(world, list) else int(world)
        if self.world != len(optim_files):
            raise LEPError(
                f"{self.tag_dir}: ZeRO world size {self.world} but {len(optim_files)} optimizer files "
                "(incomplete checkpoint)"
            )
        key = C.FP32_FLAT_GROUPS if self.stage == 3 else C.SINGLE_PARTITION_OF_FP32_GROUPS
        self.flat = [o[key] for o in optim]  # [rank][group] flat fp32 tensors (memory-mapped)
        models = [safe_load(f) for f in model_files]
        first = models[0]
        self.param_shapes: list[dict[str, torch.Size]] = first[C.PARAM_SHAPES]
        self.frozen_shapes: dict[str, torch.Size] = first.get(C.FROZEN_PARAM_SHAPES) or {}
        self.frozen_fragments = [m.get(C.FROZEN_PARAM_FRAGMENTS) or {} for m in models]
        self.shared = dict(first.get("shared_params") or {})
        # ZeRO-1/2 also keep the whole (16-bit or fp32) module state: the only copy of frozen parameters
        # when a stage does not record them as fragments (ZeRO-1 does not)
        self.module = (first.get("module") or {}) if self.stage != 3 else {}
        self._locate()

    def _locate(self) -> None:
        """Where each trainable parameter lives in the flat partitions."""
        self._where: dict[str, tuple[int, int]] = {}  # name -> (group (ZeRO-1/2) or -1, offset)
        self._shape: dict[str, tuple[int, ...]] = {}
        offset = 0
        for group, shapes in enumerate(self.param_shapes):
            if self.stage != 3:
                offset = 0
            for name, shape in shapes.items():
                numel = math.prod(shape)
                self._shape[name] = tuple(shape)
                if self.stage == 3:
                    self._where[name] = (-1, offset)
                    offset += math.ceil(numel / self.world)  # each rank's share, padded
                else:
                    self._where[name] = (group, offset)
                    offset += numel
        for name, shape in self.frozen_shapes.items():
            self._shape[name] = tuple(shape)
        for name, tensor in self.module.items():
            if isinstance(tensor, torch.Tensor):
                self._shape.setdefault(name, tuple(tensor.shape))
        for alias, target in self.shared.items():
            if target in self._shape:
                self._shape[alias] = self._shape[target]

    def describe(self) -> str:
        return f"DeepSpeed ZeRO-{self.stage} checkpoint {self.tag_dir} (world size {self.world}, fp32 master weights)"

    def names(self) -> list[str]:
        return list(self._shape)

    def stored_names(self) -> list[str]:
        return [n for n in self._shape if n not in self.shared]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def dtype(self, name: str) -> torch.dtype:
        name = self.shared.get(name, name)
        if name in self._where:
            return torch.float32
        if name in self.frozen_shapes:
            return self.frozen_fragments[0][name].dtype
        return self.module[name].dtype

    def get(self, name: str) -> torch.Tensor:
        name = self.shared.get(name, name) if name not in self._where and name not in self.frozen_shapes else name
        shape = self._shape[name]
        numel = math.prod(shape)
        if name in self.frozen_shapes:
            if self.stage == 3:
                pieces = [frags[name].reshape(-1) for frags in self.frozen_fragments]
                return torch.cat(pieces)[:numel].view(shape).clone()
            return self.frozen_fragments[0][name].reshape(shape).clone()
        if name not in self._where and name in self.module:
            return self.module[name].clone()
        if name not in self._where:
            raise LEPError(f"{self.describe()} has no tensor {name}")
        group, offset = self._where[name]
        if self.stage == 3:
            share = math.ceil(numel / self.world)
            pieces = [p for rank in self.flat for p in _slice(list(rank), offset, offset + share)]
        else:
            pieces = _slice([rank[group] for rank in self.flat], offset, offset + numel)
        flat = torch.cat(pieces) if pieces else torch.empty(0)
        if flat.numel() < numel:
            raise LEPError(f"{self.describe()}: partitions of {name} are incomplete")
        return flat[:numel].view(shape).clone()
