"""``pytorch_model*.bin`` checkpoints: memory-mapped with ``torch.load(weights_only=True)``, so no object
other than plain tensors is ever unpickled."""

from __future__ import annotations

from pathlib import Path

import torch

from lep_plugin.checkpoints.base import ShardedCheckpoint, load_weights_only
from lep_plugin.errors import LEPError

INDEX = "pytorch_model.bin.index.json"
SINGLE = "pytorch_model.bin"


class TorchBinCheckpoint(ShardedCheckpoint):
    """``pytorch_model*.bin`` shards: loaded memory-mapped with ``weights_only=True``."""

    kind = "bin"
    INDEX = INDEX
    SINGLE = SINGLE

    def __init__(self, path: Path):
        super().__init__(path)
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for shard in self.shards:
            for name, tensor in self.load_shard(shard).items():
                self._meta[name] = (tuple(tensor.shape), tensor.dtype)
        missing = [n for n in self.weight_map if n not in self._meta]
        if missing:
            raise LEPError(f"{self.path}: index lists {missing[0]} but no shard holds it")

    def names_in(self, shard: Path) -> list[str]:
        return list(self.load_shard(shard))

    @staticmethod
    def load_shard(shard: Path) -> dict[str, torch.Tensor]:
        state = load_weights_only(shard, "a plain tensor checkpoint")
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise LEPError(f"{shard} is not a plain {{name: tensor}} checkpoint")
        return state

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][1]

    def get(self, name: str) -> torch.Tensor:
        return self.load_shard(self.weight_map[name])[name].clone()

    def groups(self) -> list[list[str]]:
        # one group per stored shard: each shard is loaded once when the model is rewritten
        return [[n for n, s in self.weight_map.items() if s == shard] for shard in self.shards]

    def get_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for shard in sorted({self.weight_map[n] for n in names}):
            state = self.load_shard(shard)
            out |= {n: state[n] for n in names if self.weight_map[n] == shard}
        return out
