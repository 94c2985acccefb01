"""Reading model checkpoints tensor by tensor, and writing a model dir that changes only a few tensors.

Readers never load a whole model: safetensors shards are opened lazily (``safe_open``) and read by
tensor name through the index; ``pytorch_model*.bin`` shards are memory-mapped with
``torch.load(weights_only=True)`` (never unpickling objects); DeepSpeed ZeRO dirs are read by
:mod:`lep_plugin.io.deepspeed_checkpoint`. The embedding and lm_head tensor names come from the model
class itself (``get_input_embeddings``/``get_output_embeddings`` of a model built on the meta device),
so Llama, Mistral, Qwen and any other causal LM are handled without a list of names.

The writer copies every shard without a changed tensor byte for byte and streams the others into new
safetensors files, so only the changed tensors are ever in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from lep_plugin.errors import LEPError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

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


class Checkpoint:
    """A set of named tensors read lazily. ``kind`` is "safetensors", "bin" or "deepspeed"."""

    kind: str
    path: Path

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self) -> int:
        return sum(_numel(self.shape(n)) * _itemsize(self.dtype(n)) for n in self.names())

    def describe(self) -> str:
        return f"{self.kind} checkpoint {self.path}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LEPError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise LEPError(f"{what} {path} is not valid JSON: {err}") from None


def _inside(directory: Path, name: str, what: str) -> Path:
    """``directory/name``, refusing names that leave the directory (``../``, absolute paths, links out)."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise LEPError(f"{what} names a file {name!r} outside {directory}")
    target = (directory / name).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise LEPError(f"{what} names a file {name!r} outside {directory}")
    return target


def _weight_map(directory: Path, index_name: str) -> dict[str, Path]:
    index_path = directory / index_name
    index = read_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LEPError(f"index {index_path} has no weight_map")
    out = {}
    for name, file in weight_map.items():
        path = _inside(directory, file, f"index {index_path}")
        if not path.is_file():
            raise LEPError(f"index {index_path} lists shard {file}, which does not exist")
        out[name] = path
    return out


# ------------------------------------------------------------------------------------- safetensors


class SafetensorsCheckpoint(Checkpoint):
    kind = "safetensors"

    def __init__(self, path: Path):
        self.path = Path(path)
        if (self.path / SAFE_INDEX).is_file():
            self.weight_map = _weight_map(self.path, SAFE_INDEX)
            self.index_name: str | None = SAFE_INDEX
        else:
            self.weight_map = {}
            self.index_name = None
            single = self.path / SAFE_SINGLE
            for name in self._header(single):
                self.weight_map[name] = single.resolve()
        self.shards = sorted(set(self.weight_map.values()))
        self._headers = {shard: self._header(shard) for shard in self.shards}
        for name, shard in self.weight_map.items():
            if name not in self._headers[shard]:
                raise LEPError(f"index {self.path / SAFE_INDEX} puts {name} in {shard.name}, which lacks it")

    @staticmethod
    def _header(shard: Path) -> dict[str, dict]:
        """Tensor entries of a shard's header, validated by ``safe_open`` (a truncated or corrupt file
        fails here, before any output is written)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(shard), framework="pt"):
                pass
            with open(shard, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size))
        except (SafetensorError, OSError, ValueError) as err:
            raise LEPError(f"shard {shard} is corrupt or truncated: {err}") from None
        header.pop("__metadata__", None)
        return header

    def names(self) -> list[str]:
        return list(self.weight_map)

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


# ------------------------------------------------------------------------------------------- .bin


class TorchBinCheckpoint(Checkpoint):
    """``pytorch_model*.bin`` shards: loaded memory-mapped with ``weights_only=True``."""

    kind = "bin"

    def __init__(self, path: Path):
        self.path = Path(path)
        if (self.path / BIN_INDEX).is_file():
            self.weight_map = _weight_map(self.path, BIN_INDEX)
            self.index_name: str | None = BIN_INDEX
        else:
            single = (self.path / BIN_SINGLE).resolve()
            self.weight_map = {name: single for name in self.load_shard(single)}
            self.index_name = None
        self.shards = sorted(set(self.weight_map.values()))
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for shard in self.shards:
            for name, tensor in self.load_shard(shard).items():
                self._meta[name] = (tuple(tensor.shape), tensor.dtype)
        missing = [n for n in self.weight_map if n not in self._meta]
        if missing:
            raise LEPError(f"{self.path}: index lists {missing[0]} but no shard holds it")

    @staticmethod
    def load_shard(shard: Path) -> dict[str, torch.Tensor]:
        import pickle

        try:
            state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
            raise LEPError(f"{shard} is not a plain tensor checkpoint (refusing to unpickle it): {first}") from None
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            raise LEPError(f"{shard} is corrupt or truncated: {str(err).splitlines()[0]}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise LEPError(f"{shard} is not a plain {{name: tensor}} checkpoint")
        return state

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][1]

    def get(self, name: str) -> torch.Tensor:
        return self.load_shard(self.weight_map[name])[name].clone()


# --------------------------------------------------------------------------------------- discovery


def _checkpoint_number(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def has_hf_weights(path: Path) -> bool:
    return any((path / n).is_file() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


def is_deepspeed_dir(path: Path) -> bool:
    return (path / "latest").is_file() or any(p.is_dir() for p in path.glob("global_step*"))


def resolve_model_dir(path: Path, what: str) -> Path:
    """The dir that holds ``what``'s weights: ``path`` itself, or for an Axolotl output dir without
    final weights, its last ``checkpoint-N``."""
    path = Path(path)
    if not path.is_dir():
        raise LEPError(f"{what} {path} is not a directory")
    if has_hf_weights(path) or is_deepspeed_dir(path):
        return path
    checkpoints = sorted((p for p in path.glob("checkpoint-*") if p.is_dir() and _checkpoint_number(p) >= 0), key=_checkpoint_number)
    if checkpoints:
        return resolve_model_dir(checkpoints[-1], what)
    raise LEPError(f"{what} {path} holds no model weights (no safetensors, pytorch_model*.bin or DeepSpeed checkpoint)")


def open_checkpoint(path: Path, what: str, prefer_deepspeed: bool = True) -> Checkpoint:
    """A reader for the model dir ``path`` (see :func:`resolve_model_dir`).

    A dir with a DeepSpeed checkpoint (``latest`` + ``global_stepN/``) is read from its fp32 master
    weights when ``prefer_deepspeed``; the 16-bit HF weights a trainer may save beside it are rounded
    and, under ZeRO-3 without gathering, empty.
    """
    path = resolve_model_dir(path, what)
    if is_deepspeed_dir(path) and (prefer_deepspeed or not has_hf_weights(path)):
        if not (path / "latest").is_file():
            if has_hf_weights(path):
                return open_checkpoint_hf(path)
            raise LEPError(f"{what} {path} is a DeepSpeed checkpoint dir without a `latest` file (name the tag to read)")
        from lep_plugin.io.deepspeed_checkpoint import DeepSpeedCheckpoint

        return DeepSpeedCheckpoint(path)
    return open_checkpoint_hf(path)


def open_checkpoint_hf(path: Path) -> Checkpoint:
    if (path / SAFE_INDEX).is_file() or (path / SAFE_SINGLE).is_file():
        return SafetensorsCheckpoint(path)
    if (path / BIN_INDEX).is_file() or (path / BIN_SINGLE).is_file():
        return TorchBinCheckpoint(path)
    raise LEPError(f"{path} holds no safetensors or pytorch_model*.bin weights")


# ------------------------------------------------------------------------------ embedding tensor names


@dataclass(frozen=True)
class EmbeddingNames:
    """State-dict names of the input embedding and the output projection (None when tied)."""

    input: str
    output: str | None

    @property
    def tied(self) -> bool:
        return self.output is None


def load_config(path: Path, what: str):
    from transformers import AutoConfig

    if not (Path(path) / "config.json").is_file():
        raise LEPError(f"{what} {path} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for unknown/broken configs
        raise LEPError(f"cannot read the config of {what} {path}: {str(err).splitlines()[0]}") from None


def is_tied(config) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))


def embedding_names(config) -> EmbeddingNames:
    """Names from the model class: build it on the meta device (no memory, no weights) and map the
    parameter objects returned by ``get_input_embeddings``/``get_output_embeddings`` back to names."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:
        raise LEPError(f"cannot build a causal LM of type {getattr(config, 'model_type', '?')}: {str(err).splitlines()[0]}") from None
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if inp is None or id(inp.weight) not in names:
        raise LEPError(f"model type {config.model_type} has no input embedding")
    input_name = names[id(inp.weight)]
    if out is None or out.weight is inp.weight or is_tied(config):
        return EmbeddingNames(input_name, None)
    return EmbeddingNames(input_name, names[id(out.weight)])


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


# ------------------------------------------------------------------------------------------ writing


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
    with open(src, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    data_start = 8 + size
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


def write_weights(
    source: Checkpoint,
    output: Path,
    replacements: dict[str, torch.Tensor | Callable[[], torch.Tensor]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``source``'s tensors into ``output`` as safetensors, with ``replacements`` swapped in.

    Safetensors shards holding no replaced tensor are copied byte-exact; the others are rewritten by
    streaming. ``.bin`` sources are converted shard by shard. Returns a summary
    ``{"copied": [...], "rewritten": [...], "bytes": N}``.
    """
    unknown = [n for n in replacements if n not in source.weight_map]
    if unknown:
        raise LEPError(f"{source.path} has no tensor {unknown[0]} to replace")
    summary: dict[str, Any] = {"copied": [], "rewritten": [], "bytes": 0}
    weight_map: dict[str, str] = {}
    total = 0
    if isinstance(source, SafetensorsCheckpoint):
        for shard in source.shards:
            names = [n for n, s in source.weight_map.items() if s == shard]
            dst = output / shard.name
            changed = {n: _materialise(replacements[n]) for n in names if n in replacements}
            if changed:
                total += rewrite_safetensors(shard, dst, changed)
                summary["rewritten"].append(shard.name)
            else:
                shutil.copyfile(shard, dst)
                total += sum(_numel(source.shape(n)) * _itemsize(source.dtype(n)) for n in names)
                summary["copied"].append(shard.name)
            weight_map.update({n: shard.name for n in names})
            if progress:
                progress(dst.stat().st_size)
        single = source.index_name is None
    elif isinstance(source, TorchBinCheckpoint):
        from safetensors.torch import save_file

        count = len(source.shards)
        for i, shard in enumerate(source.shards, 1):
            state = TorchBinCheckpoint.load_shard(shard)
            state = {
                n: (_materialise(replacements[n]) if n in replacements else t).contiguous()
                for n, t in state.items()
                if source.weight_map.get(n) == shard
            }
            state = _untie_storage(state)
            name = SAFE_SINGLE if count == 1 else f"model-{i:05d}-of-{count:05d}.safetensors"
            save_file(state, str(output / name), metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in state.values())
            weight_map.update({n: name for n in state})
            summary["rewritten"].append(name)
            if progress:
                progress((output / name).stat().st_size)
        single = count == 1
    else:
        raise LEPError(f"cannot write weights from a {source.kind} checkpoint (the instruct model must be an HF dir)")
    if not single:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (output / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    summary["bytes"] = total
    return summary


def _materialise(value) -> torch.Tensor:
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
