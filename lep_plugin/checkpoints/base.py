"""The checkpoint interface: a set of named tensors read lazily, one tensor (or one stored file) at a time.

Readers never load a whole model. Each reader (:mod:`~lep_plugin.checkpoints.safetensors`,
:mod:`~lep_plugin.checkpoints.torch_bin`, :mod:`~lep_plugin.checkpoints.deepspeed`) says whether a dir is
its kind (``detect``); :mod:`lep_plugin.checkpoints.discover` picks the reader for a dir.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from lep_plugin.common.fs import read_json
from lep_plugin.errors import LEPError

# Tensors per group when a reader has no stored grouping of its own: the writer keeps one group in memory.
GROUP_BYTES = 2 << 30


def numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


class Checkpoint:
    """A set of named tensors read lazily. ``kind`` is "safetensors", "bin" or "deepspeed"."""

    kind: str
    path: Path

    @staticmethod
    def detect(path: Path) -> bool:
        """Whether the dir ``path`` holds a checkpoint of this kind."""
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def tensor_bytes(self, name: str) -> int:
        return numel(self.shape(name)) * itemsize(self.dtype(name))

    def nbytes(self) -> int:
        return sum(self.tensor_bytes(n) for n in self.stored_names())

    def stored_names(self) -> list[str]:
        """The names a model dir written from this checkpoint holds (aliases of shared tensors left out)."""
        return self.names()

    def groups(self) -> list[list[str]]:
        """:meth:`stored_names` in groups of at most :data:`GROUP_BYTES` (a writer holds one group at once)."""
        groups: list[list[str]] = [[]]
        size = 0
        for name in self.stored_names():
            if groups[-1] and size + self.tensor_bytes(name) > GROUP_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += self.tensor_bytes(name)
        return groups

    def get_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.get(name) for name in names}

    def describe(self) -> str:
        return f"{self.kind} checkpoint {self.path}"


class ShardedCheckpoint(Checkpoint):
    """HF weights: one file (``SINGLE``), or shards listed by an index file (``INDEX``) – the layout shared
    by safetensors and ``pytorch_model*.bin`` checkpoints."""

    INDEX: str
    SINGLE: str

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / cls.INDEX).is_file() or (Path(path) / cls.SINGLE).is_file()

    def __init__(self, path: Path):
        self.path = Path(path)
        if (self.path / self.INDEX).is_file():
            self.weight_map = read_weight_map(self.path, self.INDEX)
        else:
            single = (self.path / self.SINGLE).resolve()
            self.weight_map = {name: single for name in self.names_in(single)}
        self.shards = sorted(set(self.weight_map.values()))

    @property
    def sharded(self) -> bool:
        return (self.path / self.INDEX).is_file()

    def names_in(self, shard: Path) -> list[str]:
        """The tensor names stored in one file (validating it)."""
        raise NotImplementedError

    def names(self) -> list[str]:
        return list(self.weight_map)


def resolve_name(checkpoint: Checkpoint, name: str, what: str) -> str:
    """``name`` as stored in ``checkpoint``: exact, or the one stored name that ends with it / that it
    ends with (wrappers add or drop prefixes such as ``model.`` or ``base_model.model.``)."""
    available = checkpoint.names()
    if name in available:
        return name
    candidates = [n for n in available if n.endswith("." + name) or name.endswith("." + n)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LEPError(f"{what} {checkpoint.path} has no tensor {name} (missing tensor)")
    raise LEPError(f"{what} {checkpoint.path}: {name} is ambiguous ({', '.join(candidates[:3])})")


def inside(directory: Path, name: str, what: str) -> Path:
    """``directory/name``, refusing names that leave the directory (``../``, absolute paths, links out)."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise LEPError(f"{what} names a file {name!r} outside {directory}")
    target = (directory / name).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise LEPError(f"{what} names a file {name!r} outside {directory}")
    return target


def read_weight_map(directory: Path, index_name: str) -> dict[str, Path]:
    """The ``weight_map`` of a sharded checkpoint's index: tensor name -> shard path inside ``directory``."""
    index_path = directory / index_name
    index = read_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LEPError(f"index {index_path} has no weight_map")
    out = {}
    for name, file in weight_map.items():
        path = inside(directory, file, f"index {index_path}")
        if not path.is_file():
            raise LEPError(f"index {index_path} lists shard {file}, which does not exist")
        out[name] = path
    return out


def load_weights_only(path: Path, kind: str, allowed: Iterable[type] = ()) -> dict:
    """A ``torch.save`` file loaded memory-mapped with ``weights_only=True`` (plus the ``allowed`` classes):
    no other object is ever built from the pickle. Refusals and corrupt files are one clear error."""
    import pickle

    try:
        with torch.serialization.safe_globals(list(allowed)):
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise LEPError(f"{path} is not {kind} (refusing to unpickle it): {first}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise LEPError(f"{path} is corrupt or truncated: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise LEPError(f"{path} is not {kind}")
    return state
