"""A cheap fingerprint of a model's transformer body: SHA-256 of the tensors of one middle layer, read from
the checkpoint files on disk in their stored dtype.

The plugin records the fingerprint of the base model it started from in the manifest of its output
(``plugin.base``); ``lep-merge`` recomputes it on ``--base`` to refuse an adapted model that was trained
from another model (an instruct model given as the base otherwise merges with a perfect fit). Read from
disk, not from the live model, it is the same under ZeRO-3, FSDP and any number of ranks (their
parameters are partitioned). Embeddings are left out: LEP changes exactly those.

One middle layer, every tensor of it: instruct tuning (full or LoRA, which often leaves the norms and
some projections alone) changes some of them, and a layer is 1/L of the body to read.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.base import Checkpoint, resolve_name
from lep_plugin.checkpoints.discover import open_checkpoint
from lep_plugin.checkpoints.model_config import load_config
from lep_plugin.errors import LEPError

LAYER_INDEX = re.compile(r"\.(\d+)\.")
MAX_TENSORS = 16  # a layer of a mixture-of-experts model holds hundreds: its first 16 are enough


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape and bytes (as stored: no conversion)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(repr(tuple(tensor.shape)).encode())
    digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def body_names(checkpoint: Checkpoint, embeddings: list[str]) -> list[str]:
    """The stored names to fingerprint: the tensors of the middle layer (by the first number in a name),
    or the first non-embedding tensors of a model without numbered layers."""
    skip = set(embeddings)
    body = sorted(n for n in checkpoint.stored_names() if n not in skip)
    layers: dict[int, list[str]] = {}
    for name in body:
        match = LAYER_INDEX.search(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(name)
    chosen = layers[sorted(layers)[len(layers) // 2]] if layers else body
    return chosen[:MAX_TENSORS]


def fingerprint(checkpoint: Checkpoint, names: list[str]) -> dict[str, dict[str, str]]:
    """``{name: {"dtype", "sha256"}}`` of the tensors ``names`` of ``checkpoint``."""
    out = {}
    for name in names:
        tensor = checkpoint.get(name)
        out[name] = {"dtype": _dtype_name(tensor.dtype), "sha256": tensor_digest(tensor)}
    return out


def first_mismatch(checkpoint: Checkpoint, recorded: dict[str, dict[str, str]], what: str) -> str | None:
    """The first recorded tensor that ``checkpoint`` lacks or holds with other values, else None.

    Each tensor is compared in the dtype it was recorded in: a DeepSpeed fp32 master of a bf16 model
    rounds back to the same bf16 bytes, so the same weights match whatever the checkpoint kind."""
    for name, entry in recorded.items():
        try:
            tensor = checkpoint.get(resolve_name(checkpoint, name, what))
        except LEPError:
            return name
        dtype = getattr(torch, entry.get("dtype", ""), None)
        if not isinstance(dtype, torch.dtype) or tensor_digest(tensor.to(dtype)) != entry.get("sha256"):
            return name
    return None


def model_fingerprint(model_dir: str | Path) -> dict[str, dict[str, str]]:
    """The fingerprint of the HF model in ``model_dir`` (its HF weights preferred over a DeepSpeed copy)."""
    model_dir = Path(model_dir)
    checkpoint = open_checkpoint(model_dir, "base model", prefer_deepspeed=False)
    # the embeddings by their rows, not by building the model class: inside a training process under
    # ZeRO-3, transformers would build it partitioned through DeepSpeed
    config = load_config(model_dir, "base model")
    vocab = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size", None)
    embeddings = [n for n in checkpoint.names() if tuple(checkpoint.shape(n))[:1] == (vocab,)]
    return fingerprint(checkpoint, body_names(checkpoint, embeddings))


def local_model_dir(source: str, revision: str | None = None) -> Path | None:
    """``source`` as a local dir: the dir itself, or a Hub id's snapshot already in the local cache."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a Hub id: hub errors have many types
        return None


@functools.lru_cache(maxsize=4)  # the plugin writes a manifest at every checkpoint of a run
def base_record(source: str, revision: str | None = None) -> dict[str, Any]:
    """What the plugin's manifest records of the base model it started from (``plugin.base``):
    ``{"model": source, "tensors": fingerprint}``, or ``{"model": source, "unavailable": why}``."""
    directory = local_model_dir(source, revision)
    if directory is None:
        return {"model": source, "unavailable": "the model's files are not on this machine"}
    try:
        return {"model": source, "tensors": model_fingerprint(directory)}
    except LEPError as err:
        return {"model": source, "unavailable": str(err)}
