"""Which parameters train when the run has an Axolotl adapter (``adapter: lora|qlora``).

The embeddings train whole as PEFT ``modules_to_save`` copies (full precision even over a 4-bit body:
bitsandbytes quantises ``nn.Linear`` layers only, and never the output embedding). With ``lep.body:
frozen`` the adapter's LoRA weights stay frozen (``lora_B`` is zero at init, so the body is exactly the
base model's: the adapter only serves to load it quantised); with ``lep.body: lora`` they train too.
"""

from __future__ import annotations

from torch import nn

from lep_plugin.errors import LEPError

LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


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
