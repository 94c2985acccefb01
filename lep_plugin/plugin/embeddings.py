"""Embedding conversion inside Axolotl's model loading, plain or under DeepSpeed ZeRO-3.

Called from ``post_model_build``: the model is built from the base checkpoint (old vocabulary) and
Axolotl has not yet resized it to ``len(tokenizer)`` (its ``_resize_token_embeddings`` runs right after
that hook and, finding enough rows, only re-ties weights) – so the old rows are still there to average.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from lep_plugin.io.vocab_operator import convert_embeddings, padded_size, update_config_ids, vocabulary_operator
from lep_plugin.math.operator import Weighting, apply_operator
from lep_plugin.plugin.distributed import is_main

LOG = logging.getLogger("lep_plugin")


def is_zero3_param(param: torch.Tensor) -> bool:
    """A parameter partitioned by DeepSpeed ZeRO-3 (its local data is a shard or empty)."""
    return hasattr(param, "ds_id")


def full_rows(param: torch.Tensor) -> int:
    return int(param.ds_shape[0]) if is_zero3_param(param) else int(param.shape[0])


@contextlib.contextmanager
def gathered(params: list[torch.Tensor], modifier_rank: int | None):
    """Full parameters inside the block (ZeRO-3: gather, and re-partition on exit from ``modifier_rank``)."""
    if any(is_zero3_param(p) for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


def convert_model_embeddings(
    model, new_tok, old_tok, pad_to_multiple_of: int | None = None, weighting: Weighting = "mean"
) -> int:
    """T-initialise ``model``'s embeddings for ``new_tok`` (no random rows). Returns the new row count."""
    embed_in = model.get_input_embeddings()
    if not is_zero3_param(embed_in.weight):
        convert_embeddings(model, new_tok, old_tok, pad_to_multiple_of=pad_to_multiple_of, weighting=weighting)
        return model.get_input_embeddings().weight.shape[0]

    # ZeRO-3: every rank holds a shard. Gather the old matrices (read-only), compute the new ones on every
    # rank (deterministic), let transformers resize (it creates partitioned params under zero.Init), then
    # write the full new matrices from rank 0 and let DeepSpeed re-partition them.
    embed_out = model.get_output_embeddings()
    tied = embed_out is not None and embed_out.weight is embed_in.weight
    params = [embed_in.weight] + ([] if tied or embed_out is None else [embed_out.weight])
    with gathered(params, modifier_rank=None):
        old_in = embed_in.weight.detach().clone()
        old_out = None if len(params) == 1 else embed_out.weight.detach().clone()
    rows = padded_size(len(new_tok), pad_to_multiple_of)
    operator = vocabulary_operator(new_tok, old_tok, weighting, rows, old_in.shape[0])
    new_in = apply_operator(operator, old_in)
    new_out = None if old_out is None else apply_operator(operator, old_out)
    del old_in, old_out
    with torch.no_grad():
        model.resize_token_embeddings(rows, mean_resizing=False)
        embed_in = model.get_input_embeddings()
        embed_out = model.get_output_embeddings()
        targets = [embed_in.weight] + ([] if new_out is None else [embed_out.weight])
        with gathered(targets, modifier_rank=0):
            if is_main():
                embed_in.weight.data.copy_(new_in.to(embed_in.weight.dtype))
                if new_out is not None:
                    embed_out.weight.data.copy_(new_out.to(embed_out.weight.dtype))
    update_config_ids(model.config, new_tok, rows)
    if getattr(model, "generation_config", None) is not None:
        update_config_ids(model.generation_config, new_tok, None)
    return rows
