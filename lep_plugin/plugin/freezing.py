"""Which parameters train: the embedding matrices only, or only the rows of new tokens.

``requires_grad=False`` on everything else, so the HF Trainer (plain or DeepSpeed) gives the optimizer –
and its state – the embedding parameters only. ``new_rows`` adds a gradient hook that zeroes the rows of
old tokens; the hook sees the full gradient also under ZeRO-2/3 (DeepSpeed reduces and partitions it
afterwards, in its own hooks on the accumulated gradient), unlike Axolotl's row-range freezing.

FSDP2 (``fully_shard``) replaces each parameter by a sharded DTensor parameter when it wraps the model,
after the plugin's hooks ran, and writes the reduce-scattered gradient into it directly: no tensor hook
sees it. There :func:`mask_sharded_gradients` zeroes the old rows of each rank's gradient shard before
the optimizer step (``on_pre_optimizer_step``; the Trainer has clipped by then, so the clipping norm
there still counts the old rows' gradients).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from lep_plugin.checkpoints.model_config import embedding_parameters
from lep_plugin.errors import LEPError

_MASK_ATTR = "_lep_row_mask_hook"


def freeze_all_but_embeddings(model: nn.Module) -> list[str]:
    """Freeze every parameter except the embedding matrices; returns the trainable names. Idempotent."""
    keep = {id(p) for p in embedding_parameters(model)}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in keep)
        if id(param) in keep:
            trainable.append(name)
    if not trainable:
        raise LEPError("the model's embedding matrices are not among its parameters; cannot train them")
    return trainable


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def mask_old_rows(model: nn.Module, trainable_rows: torch.Tensor) -> None:
    """Only rows where ``trainable_rows`` is True get gradient (hook on each embedding matrix). Idempotent."""
    for param in embedding_parameters(model):
        previous = getattr(param, _MASK_ATTR, None)
        if previous is not None:
            previous.remove()
        mask = trainable_rows.to(torch.bool)

        def hook(grad: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
            if grad.shape[0] != mask.shape[0]:
                raise LEPError(f"embedding gradient has {grad.shape[0]} rows, the new-row mask {mask.shape[0]}")
            return grad * mask.to(device=grad.device, dtype=grad.dtype).unsqueeze(1)

        setattr(param, _MASK_ATTR, param.register_hook(hook))


def mask_sharded_gradients(model: nn.Module, trainable_rows: torch.Tensor) -> int:
    """Zero the old-token rows of DTensor (FSDP2-sharded) embedding gradients in place; returns how many
    gradients it masked (0 when the gradients are plain tensors: the tensor hook did it already)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    masked = 0
    for param in embedding_parameters(model):
        grad = param.grad
        if not isinstance(grad, DTensor):
            continue
        if grad.shape[0] != trainable_rows.shape[0]:
            raise LEPError(f"embedding gradient has {grad.shape[0]} rows, the new-row mask {trainable_rows.shape[0]}")
        # every rank holds the whole mask: each takes its own rows, without communication
        column = trainable_rows.to(device=grad.to_local().device, dtype=grad.dtype).unsqueeze(1)
        grad.mul_(distribute_tensor(column, grad.device_mesh, grad.placements, src_data_rank=None))
        masked += 1
    return masked


def new_token_rows(new_tok, old_tok, rows: int) -> torch.Tensor:
    """Bool mask over the ``rows`` embedding rows: True for tokens the old vocabulary does not have.

    Padding rows beyond the tokenizer stay frozen (no token ever uses them).
    """
    old_vocab = old_tok.get_vocab()
    mask = torch.zeros(rows, dtype=torch.bool)
    for token, new_id in new_tok.get_vocab().items():
        if token not in old_vocab and new_id < rows:
            mask[new_id] = True
    if not bool(mask.any()):
        raise LEPError("`lep.train: new_rows`: the new vocabulary has no token the old one lacks")
    return mask


class ShardedRowMaskCallback(TrainerCallback):
    """``lep.train: new_rows`` under FSDP2: :func:`mask_sharded_gradients` before every optimizer step."""

    def __init__(self, trainable_rows: torch.Tensor):
        self.trainable_rows = trainable_rows

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            mask_sharded_gradients(model, self.trainable_rows)
        return control
