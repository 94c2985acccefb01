"""Which parameters train when the run has an Axolotl adapter (``adapter: lora|qlora``).

The embeddings train whole as PEFT ``modules_to_save`` copies (full precision even over a 4-bit body:
bitsandbytes quantises ``nn.Linear`` layers only, and never the output embedding). With ``lep.body:
frozen`` the adapter's LoRA weights stay frozen (``lora_B`` is zero at init, so the body is exactly the
base model's: the adapter only serves to load it quantised); with ``lep.body: lora`` they train too.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from lep_plugin.errors import LEPError

if TYPE_CHECKING:  # `lep check` reads these rules without loading torch
    from torch import nn

ADAPTERS = ("lora", "qlora")  # the adapters `lep.train` (not off) accepts: args.adapter_conflicts
# Axolotl's fused LoRA kernels (Triton, CUDA only); its config validation turns on the ones left unset
LORA_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def body_lora_trains(body: str, has_adapter: bool) -> bool:
    """The one rule for whether the adapter's body LoRA trains (``lep.body: lora`` with an adapter)."""
    return has_adapter and body == "lora"


def trained_parts(train: str, body: str, adapter: str | None) -> str:
    """What a run with these settings trains, in words: what ``lep check`` says, by the rules the
    plugin's freezing applies (:func:`body_lora_trains`, ``lep.train``)."""
    if train == "off":
        return "whatever the rest of the YAML says (the plugin does not freeze anything)"
    with_adapter = adapter in ADAPTERS
    what = (
        "only the rows of new tokens in the input embedding and lm_head"
        if train == "new_rows"
        else "the input embedding and lm_head matrices"
    )
    if with_adapter:
        what += " (the adapter's full-precision `modules_to_save` copies)"
    if body_lora_trains(body, with_adapter):
        return f"{what} and the body LoRA ({adapter}); every other weight frozen"
    if with_adapter:
        return f"{what}; the adapter's LoRA stays at zero and every other weight frozen"
    return f"{what}; every other weight frozen"


def lora_kernels_for_cpu(cfg: MutableMapping[str, Any], cuda: bool) -> str | None:
    """Without CUDA, turn off the fused LoRA kernels Axolotl would turn on for ``adapter: lora|qlora``
    (they fail deep in the first step: ``Torch not compiled with CUDA enabled``); returns what was done,
    or None. A kernel set to true by the user is refused, with the keys to set."""
    if cuda or cfg.get("adapter") not in ADAPTERS:
        return None
    asked = [k for k in LORA_KERNEL_KEYS if cfg.get(k) is True]
    if asked:
        raise LEPError(
            f"{', '.join(asked)}: Axolotl's fused LoRA kernels need CUDA, which this machine lacks; set "
            + ", ".join(f"`{k}: false`" for k in LORA_KERNEL_KEYS)
        )
    unset = [k for k in LORA_KERNEL_KEYS if cfg.get(k) is None]
    for key in unset:
        cfg[key] = False
    if not unset:
        return None
    return f"no CUDA: {', '.join(unset)} set to false (Axolotl's fused LoRA kernels need CUDA)"


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def is_lora_parameter(name: str) -> bool:
    return any(marker in name for marker in LORA_MARKERS)


def check_embeddings_are_copies(model: nn.Module, trainable: list[str]) -> None:
    """The trainable embedding matrices of a PEFT model must be its ``modules_to_save`` copies: the
    originals are what the adapter saves nothing of."""
    stray = [name for name in trainable if ".modules_to_save." not in name]
    if stray:
        raise LEPError(
            f"{stray[0]} is not a `modules_to_save` copy: the adapter would not save the trained embeddings; "
            "set `lora_modules_to_save: [embed_tokens, lm_head]`"
        )


def unfreeze_body_lora(model: nn.Module) -> list[str]:
    """``lep.body: lora``: the LoRA weights of the adapter train too. Returns their names. Idempotent."""
    names = []
    for name, param in model.named_parameters():
        if is_lora_parameter(name):
            param.requires_grad_(True)
            names.append(name)
    if not names:
        raise LEPError(
            "`lep.body: lora`: the model has no LoRA weights (is `adapter: lora` with `lora_target_modules` set?)"
        )
    return names
