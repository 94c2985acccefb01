"""Safetensors checkpoints (one file, or shards with an index): headers validated up front, tensors read
by name with ``safe_open``; and rewriting a shard with a few tensors replaced, streaming the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.base import ShardedCheckpoint
from lep_plugin.errors import LEPError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# safetensors dtype codes (the file format's own names)
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class SafetensorsCheckpoint(ShardedCheckpoint):
    kind = "safetensors"
    INDEX = INDEX
    SINGLE = SINGLE

    def __init__(self, path: Path):
        self._headers: dict[Path, dict[str, dict]] = {}
        super().__init__(path)
        for name, shard in self.weight_map.items():
            if name not in self.names_in(shard):
                raise LEPError(f"index {self.path / INDEX} puts {name} in {shard.name}, which lacks it")

    def names_in(self, shard: Path) -> list[str]:
        return list(self._header(shard))

    def _header(self, shard: Path) -> dict[str, dict]:
        """Tensor entries of a shard's header, validated by ``safe_open`` (a truncated or corrupt file
        fails here, before any output is written); read once per shard."""
        from safetensors import SafetensorError, safe_open

        if shard not in self._headers:
            try:
                with safe_open(str(shard), framework="pt"):
                    pass
                header, _ = raw_header(shard)
            except (SafetensorError, OSError, ValueError) as err:
                raise LEPError(f"shard {shard} is corrupt or truncated: {err}") from None
            header.pop("__metadata__", None)
            self._headers[shard] = header
        return self._headers[shard]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._headers[self.weight_map[name]][name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self._headers[self.weight_map[name]][name]["dtype"]
        if code not in _ST_NAMES:
            raise LEPError(f"tensor {name} has unsupported dtype {code}")
        return _ST_NAMES[code]

    def get(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        shard = self.weight_map[name]
        try:
            with safe_open(str(shard), framework="pt") as fh:
                return fh.get_tensor(name)
        except SafetensorError as err:
            raise LEPError(f"cannot read {name} from {shard}: {err}") from None


def raw_header(shard: Path) -> tuple[dict[str, Any], int]:
    """A shard's JSON header (``__metadata__`` included) and the offset where tensor data starts."""
    with open(shard, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size)), 8 + size


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _write_header(fh, header: dict) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)


def rewrite_safetensors(src: Path, dst: Path, replacements: dict[str, torch.Tensor], chunk: int = 64 << 20) -> int:
    """Copy shard ``src`` to ``dst`` replacing some tensors; unchanged tensors are streamed in chunks.

    Returns the size of the tensor data written.
    """
    header, data_start = raw_header(src)
    meta = header.pop("__metadata__", None)
    order = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    new_header: dict[str, Any] = {"__metadata__": meta} if meta is not None else {}
    offset = 0
    for name in order:
        if name in replacements:
            t = replacements[name]
            dtype, shape, nbytes = _ST_DTYPES[t.dtype], list(t.shape), t.numel() * t.element_size()
        else:
            begin, end = header[name]["data_offsets"]
            dtype, shape, nbytes = header[name]["dtype"], header[name]["shape"], end - begin
        new_header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _write_header(fout, new_header)
        for name in order:
            if name in replacements:
                fout.write(_tensor_bytes(replacements[name]))
                continue
            begin, end = header[name]["data_offsets"]
            fin.seek(data_start + begin)
            remaining = end - begin
            while remaining:
                block = fin.read(min(chunk, remaining))
                if not block:
                    raise LEPError(f"shard {src} ended early while copying {name}")
                fout.write(block)
                remaining -= len(block)
    return offset
