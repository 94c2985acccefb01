"""The body LoRA of a LoRA donor, carried into the instruct model (the authors' ``compose_ushanka``).

LEP step 4 propagates the donor's embeddings (its ``modules_to_save`` copies) exactly as a full model's;
then each body LoRA pair goes onto the instruct model's layer: ``W_instruct + s · scaling · B @ A`` with
PEFT's ``scaling`` (α/r, or α/√r for rsLoRA) and the user's ``--lora-scale s`` (the authors'
``alpha_scale`` is 1/s; 0 leaves the body untouched). Each merged weight is computed when its shard is
written (:func:`lep_plugin.checkpoints.writer.write_weights` calls the loader), so only one shard's
tensors are in memory. ``--lora-output adapter`` writes the pairs as a PEFT adapter for the merged model
instead (``lora_alpha`` times s), the body weights left as the instruct model's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lep_plugin.checkpoints.base import Checkpoint, resolve_name
from lep_plugin.checkpoints.fingerprint import model_fingerprint
from lep_plugin.checkpoints.peft import ADAPTER_CONFIG, AdapterCheckpoint, LoraPair, resolve_adapter_dir
from lep_plugin.errors import LEPError, setting_name

LoraOutput = Literal["merge", "adapter"]
ADAPTER_SUBDIR = "body_lora"  # --lora-output adapter: the adapter for the merged model, inside it


@dataclass(frozen=True)
class BodyLora:
    """The body LoRA to carry: each pair with the instruct tensor it goes onto."""

    adapter: AdapterCheckpoint
    targets: dict[str, LoraPair]  # instruct tensor name (as stored) -> pair
    scale: float
    output: LoraOutput

    def describe(self) -> str:
        how = (
            "merged into the instruct layers"
            if self.output == "merge"
            else f"written as a PEFT adapter ({ADAPTER_SUBDIR}/)"
        )
        return f"body LoRA: {len(self.targets)} pairs × scale {self.scale:g}, {how}"

    def report(self) -> dict[str, Any]:
        pairs = list(self.targets.values())
        return {
            "adapter": str(self.adapter.path),
            "pairs": len(pairs),
            "ranks": sorted({p.rank for p in pairs}),
            "alphas": sorted({p.alpha for p in pairs}),
            "rslora": bool(self.adapter.config.get("use_rslora")),
            "lora_scale": self.scale,
            "output": self.output,
        }


def plan_body_lora(
    adapter: AdapterCheckpoint, base: Checkpoint, instruct: Checkpoint, scale: float, output: LoraOutput
) -> BodyLora:
    """Match every pair to the base's and the instruct model's weight of the same name and shape (an
    adapter of another base has other names or shapes: refused)."""
    targets = {}
    for pair in adapter.pairs:
        expected = (adapter.shape_of(pair.b)[0], adapter.shape_of(pair.a)[1])
        for what, checkpoint in (("base", base), ("instruct", instruct)):
            name = resolve_name(checkpoint, pair.module + ".weight", what)
            if tuple(checkpoint.shape(name)) != expected:
                raise LEPError(
                    f"adapter {adapter.path}: the LoRA on {pair.module} is for a {list(expected)} weight but {what} "
                    f"{name} is {list(checkpoint.shape(name))}: an adapter of another base model"
                )
        targets[resolve_name(instruct, pair.module + ".weight", "instruct")] = pair
    return BodyLora(adapter, targets, scale, output)


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """``weight + factor · b @ a`` computed in float32 (float64 for a float64 weight), in the weight's dtype."""
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    delta = b.to(work) @ a.to(work)
    return (weight.to(work) + factor * delta).to(weight.dtype)


def body_replacements(lora: BodyLora | None, instruct: Checkpoint) -> dict[str, Callable[[], torch.Tensor]]:
    """Loaders of the merged body weights for the writer (none for ``--lora-output adapter`` or s = 0)."""
    if lora is None or lora.output != "merge" or lora.scale == 0:
        return {}

    def loader(name: str, pair: LoraPair) -> Callable[[], torch.Tensor]:
        return lambda: merged_weight(
            instruct.get(name), lora.adapter.raw(pair.a), lora.adapter.raw(pair.b), lora.scale * pair.scaling
        )

    return {name: loader(name, pair) for name, pair in lora.targets.items()}


def write_body_adapter(lora: BodyLora | None, model_dir: Path, final_dir: Path) -> Path | None:
    """``--lora-output adapter``: the body pairs as a PEFT adapter of the merged model in
    ``model_dir/body_lora`` (``final_dir`` is where the model will be once the output is moved in place)."""
    if lora is None or lora.output != "adapter":
        return None
    from safetensors.torch import save_file

    target = model_dir / ADAPTER_SUBDIR
    target.mkdir()
    tensors = {}
    for pair in lora.targets.values():
        tensors[pair.a] = lora.adapter.raw(pair.a).contiguous()
        tensors[pair.b] = lora.adapter.raw(pair.b).contiguous()
    save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = dict(lora.adapter.config)
    # s scales every pair: through lora_alpha (PEFT's scaling is linear in alpha, with or without rsLoRA)
    config["lora_alpha"] = config.get("lora_alpha", 8) * lora.scale
    config["alpha_pattern"] = {k: v * lora.scale for k, v in (config.get("alpha_pattern") or {}).items()}
    config["modules_to_save"] = None  # the embeddings are the merged model's own
    config["base_model_name_or_path"] = str(Path(final_dir).resolve())
    (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target


def with_adapter_base(options):
    """``options`` with ``base`` filled in from a PEFT adapter's ``adapter_config.json`` when not given."""

    if options.base is not None:
        return options
    adapter_dir = resolve_adapter_dir(options.adapted) if Path(options.adapted).is_dir() else None
    if adapter_dir is None:
        raise LEPError("--base is required (the original base model dir)")
    named = AdapterCheckpoint(adapter_dir).base_name
    if not named or not Path(named).is_dir():
        raise LEPError(f"adapter {adapter_dir} names base {named!r}, which is not a local dir: pass it as --base")
    return options.model_copy(update={"base": Path(named)})


def check_named_base(adapter: AdapterCheckpoint, base_dir: Path) -> None:
    """Refuse an adapter whose ``adapter_config.json`` names a local base dir holding another model than
    ``--base``: compared by content (the body fingerprint), so a copy of the right base elsewhere passes. A
    Hub id cannot be compared with a dir: the weight shapes are still checked, in :func:`plan_body_lora`."""
    named = adapter.base_name
    if not named or not Path(named).is_dir() or Path(named).resolve() == Path(base_dir).resolve():
        return
    if model_fingerprint(named) != model_fingerprint(base_dir):
        raise LEPError(
            f"adapter {adapter.path} was trained on {named}, whose weights differ from --base {base_dir}'s: an "
            "adapter of another base model (--no-check-adapted merges it anyway)"
        )


def donor_body_lora(options, models: dict) -> tuple[BodyLora | None, list[str]]:
    """The body LoRA of a LoRA donor (``models["adapted"]`` read from a PEFT adapter) to carry, or None,
    with plan notes: a LoRA that is all zero (a frozen body: ``lep.body: frozen``, QLoRA for its 4-bit
    loading) carries nothing and is not reported as carried, and LoRA settings given where nothing is
    carried are a warning, not ignored silently."""
    adapted = models["adapted"].checkpoint
    given = _lora_settings_given(options)
    if not isinstance(adapted, AdapterCheckpoint):
        why = "--adapted is a full model: there is no body LoRA to carry"
        return None, [f"warning: {given} has no effect: {why}"] if given else []
    if options.check_adapted:
        check_named_base(adapted, options.base)
    if models["instruct"].names.tied:
        check_tied_copies(adapted)
    base, instruct = models["base"].checkpoint, models["instruct"].checkpoint
    lora = plan_body_lora(adapted, base, instruct, options.lora_scale, options.lora_output)
    if any(bool(adapted.raw(pair.b).any()) for pair in lora.targets.values()):
        return lora, []
    notes = [
        f"body LoRA: all {len(lora.targets)} lora_B are zero (a frozen body): nothing to carry, the body stays "
        "the instruct model's"
    ]
    if given:
        notes.append(f"warning: {given} has no effect: the adapter's body LoRA is zero")
    return None, notes


def _lora_settings_given(options) -> str:
    """The LoRA settings set away from their defaults, as the user wrote them ("" if none)."""
    fields = type(options).model_fields
    given = [name for name in ("lora_scale", "lora_output") if getattr(options, name) != fields[name].default]
    return " and ".join(f"{setting_name(name)} {getattr(options, name)}" for name in given)


def check_tied_copies(adapter: AdapterCheckpoint) -> None:
    """A tied model has one matrix; PEFT without ``ensure_weight_tying`` trains ``embed_tokens`` and
    ``lm_head`` as two ``modules_to_save`` copies, and two different copies cannot both be carried."""
    names = adapter.names()
    embed = next((n for n in names if n.endswith("embed_tokens.weight")), None)
    head = next((n for n in names if n.endswith("lm_head.weight")), None)
    if embed and head and not torch.equal(adapter.get(embed), adapter.get(head)):
        raise LEPError(
            f"adapter {adapter.path}: the model ties its embeddings, but the adapter trained embed_tokens and lm_head "
            "as two different copies; train with `peft_ensure_weight_tying: true` (or only embed_tokens in "
            "`lora_modules_to_save`)"
        )
