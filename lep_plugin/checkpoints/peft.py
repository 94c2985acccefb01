"""A PEFT LoRA adapter dir as an LEP donor: its whole embedding matrices (``modules_to_save``) and its
body LoRA pairs, read lazily from ``adapter_model.safetensors`` (or ``.bin``).

What ``axolotl train`` with ``adapter: lora|qlora`` and ``lora_modules_to_save: [embed_tokens, lm_head]``
writes (into ``output_dir`` and each ``checkpoint-N``): PEFT strips the ``modules_to_save.<adapter>.``
part of the copies' names, so the trained embeddings are stored as ``base_model.model.<name>`` and the
LoRA pairs as ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (adapter name removed).

The scale of each pair is PEFT's own (``LoraLayer.update_layer``): ``alpha / r``, or ``alpha / sqrt(r)``
with rsLoRA, with ``r`` and ``alpha`` per module from ``rank_pattern`` / ``alpha_pattern`` as PEFT matches
them. What PEFT merges by another formula (DoRA, LoRA biases, fan-in-fan-out Conv1D layers) is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.base import Checkpoint, load_weights_only
from lep_plugin.checkpoints.discover import checkpoint_number, has_hf_weights
from lep_plugin.common.fs import read_json
from lep_plugin.errors import LEPError

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
_PAIR = re.compile(r"(?P<module>.+)\.lora_(?P<which>A|B)\.weight")
_EMBEDDING_LORA = re.compile(r"\.lora_embedding_[AB]\b")
# PEFT also saves both sides of a resized ``modules_to_save`` wrapper (``save_embedding_layers``): the
# untrained original and the copy under its wrapper name; the copy's plain name is the one to read
_WRAPPER_COPY = re.compile(r"\.(original_module|modules_to_save)\.")


@dataclass(frozen=True)
class LoraPair:
    """One body LoRA: ``W += scaling · B @ A`` on the weight ``module + ".weight"``."""

    module: str  # as named in the model, without PEFT's prefix (``model.layers.0.self_attn.q_proj``)
    a: str  # stored names
    b: str
    rank: int
    alpha: float
    scaling: float


def weights_file(directory: Path) -> Path | None:
    return next((directory / name for name in WEIGHTS if (directory / name).is_file()), None)


def is_adapter_dir(path: Path) -> bool:
    """An adapter (not a full model): ``adapter_config.json`` and no HF model weights beside it."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not has_hf_weights(path)


def resolve_adapter_dir(path: Path) -> Path | None:
    """The adapter dir for ``path`` (itself, or an Axolotl output's last ``checkpoint-N`` when the output
    holds no adapter weights yet); None when ``path`` is not an adapter at all."""
    path = Path(path)
    if not path.is_dir() or has_hf_weights(path):
        return None
    if (path / ADAPTER_CONFIG).is_file() and weights_file(path) is not None:
        return path
    numbered = [p for p in path.glob("checkpoint-*") if p.is_dir() and checkpoint_number(p) >= 0 and is_adapter_dir(p)]
    if numbered:
        return resolve_adapter_dir(max(numbered, key=checkpoint_number))
    if (path / ADAPTER_CONFIG).is_file():
        raise LEPError(f"adapter {path} has {ADAPTER_CONFIG} but no {' or '.join(WEIGHTS)} (missing weights)")
    return None


def _refuse_unsupported(config: dict[str, Any], path: Path) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise LEPError(f"adapter {path} is a {config.get('peft_type')} adapter; lep-merge reads LoRA adapters")
    if config.get("use_dora"):
        raise LEPError(
            f"adapter {path} is a DoRA adapter: lep-merge merges plain LoRA and rsLoRA only (merge it with PEFT first)"
        )
    if config.get("fan_in_fan_out"):
        raise LEPError(f"adapter {path} has fan_in_fan_out (Conv1D layers), which lep-merge does not merge")
    if config.get("lora_bias") or config.get("bias") not in (None, "none"):
        raise LEPError(f"adapter {path} trains biases (`bias`/`lora_bias`), which lep-merge does not carry")


def _scaling(config: dict[str, Any], module: str, rank: int) -> tuple[float, float]:
    """(alpha, scaling) of ``module`` as PEFT computes them."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8)))
    return alpha, alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


class AdapterCheckpoint(Checkpoint):
    """The adapter's tensors, named as in the model (PEFT's ``base_model.model.`` prefix dropped)."""

    kind = "peft-adapter"

    @staticmethod
    def detect(path: Path) -> bool:
        return is_adapter_dir(path) and weights_file(Path(path)) is not None

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = read_json(self.path / ADAPTER_CONFIG, "adapter config")
        if not isinstance(self.config, dict):
            raise LEPError(f"{self.path / ADAPTER_CONFIG} is not a JSON object")
        _refuse_unsupported(self.config, self.path)
        self.file = weights_file(self.path)
        if self.file is None:
            raise LEPError(f"adapter {self.path} has {ADAPTER_CONFIG} but no {' or '.join(WEIGHTS)} (missing weights)")
        self._stored = self._read_index()
        self.pairs = self._pairs()

    def _read_index(self) -> dict[str, str]:
        """model name -> stored name, with shapes and dtypes cached."""
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if self.file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(self.file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                        piece = f.get_slice(key)
                        self._meta[key] = (tuple(piece.get_shape()), _dtype(piece.get_dtype()))
            except (SafetensorError, OSError) as err:
                raise LEPError(f"{self.file} is corrupt or truncated: {str(err).splitlines()[0]}") from None
        else:
            state = load_weights_only(self.file, "a PEFT adapter")
            self._meta = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        if not self._meta:
            raise LEPError(f"adapter {self.file} holds no tensors (missing weights)")
        embedded = next((k for k in self._meta if _EMBEDDING_LORA.search(k)), None)
        if embedded is not None:
            raise LEPError(
                f"adapter {self.path} puts a LoRA on an embedding ({embedded}); LEP needs the embedding matrices "
                "trained whole: `lora_modules_to_save: [embed_tokens, lm_head]`"
            )
        return {key.removeprefix(PREFIX): key for key in self._meta}

    def _pairs(self) -> list[LoraPair]:
        found: dict[str, dict[str, str]] = {}
        for name, stored in self._stored.items():
            match = _PAIR.fullmatch(name)
            if match:
                found.setdefault(match["module"], {})[match["which"]] = stored
        pairs = []
        for module, ab in sorted(found.items()):
            if set(ab) != {"A", "B"}:
                raise LEPError(
                    f"adapter {self.file}: {module} has lora_{next(iter(ab))} but not its partner (missing weights)"
                )
            rank = self._meta[ab["A"]][0][0]
            if self._meta[ab["B"]][0][1] != rank:
                raise LEPError(
                    f"adapter {self.file}: {module} has lora_A of rank {rank} but lora_B {list(self._meta[ab['B']][0])}"
                )
            alpha, scaling = _scaling(self.config, module, rank)
            pairs.append(LoraPair(module, ab["A"], ab["B"], rank, alpha, scaling))
        return pairs

    def names(self) -> list[str]:
        """The whole matrices the adapter holds (its ``modules_to_save`` copies): the donor's embeddings."""
        return [n for n in self._stored if not _PAIR.fullmatch(n) and not _WRAPPER_COPY.search(n)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[self._stored[name]][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[self._stored[name]][1]

    def get(self, name: str) -> torch.Tensor:
        return self.raw(self._stored[name])

    def shape_of(self, stored: str) -> tuple[int, ...]:
        """The shape of a tensor by its stored name (LoRA pairs too)."""
        return self._meta[stored][0]

    def raw(self, stored: str) -> torch.Tensor:
        """A tensor by its stored name (LoRA pairs too)."""
        if self.file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(self.file), framework="pt") as f:
                return f.get_tensor(stored)
        return load_weights_only(self.file, "a PEFT adapter")[stored]

    @property
    def base_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def describe(self) -> str:
        ranks = sorted({p.rank for p in self.pairs})
        body = f"{len(self.pairs)} body LoRA pairs, rank {'/'.join(map(str, ranks))}" if self.pairs else "no body LoRA"
        return f"PEFT adapter {self.path} ({body}{', rsLoRA' if self.config.get('use_rslora') else ''})"


def _dtype(name: str) -> torch.dtype:
    table = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    if name not in table:
        raise LEPError(f"adapter tensor dtype {name} is not a floating-point type lep-merge reads")
    return table[name]
