"""Giving a model the new vocabulary: T-initialised input and output embeddings (LEP step 2).

One conversion, two faces:

* :func:`convert_embeddings` – an in-memory HF model (the plugin's ``post_model_build``), plain or with
  DeepSpeed ZeRO-3 partitioned parameters (gathered to read, written from rank 0 and re-partitioned);
* :func:`convert_checkpoint` – ``lep vocab convert``: a model dir on disk (safetensors, ``.bin`` or a
  DeepSpeed-only checkpoint dir) to a new HF dir, streamed shard by shard, so only the two embedding
  matrices are ever in memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lep_plugin.checkpoints.base import resolve_name
from lep_plugin.checkpoints.discover import open_checkpoint, resolve_model_dir
from lep_plugin.checkpoints.model_config import (
    embedding_names,
    embedding_parameters,
    load_config,
    update_config,
    write_config_files,
)
from lep_plugin.checkpoints.writer import write_weights
from lep_plugin.common.distributed import gathered, is_zero3_param
from lep_plugin.common.fs import atomic_output_dir, check_no_overlap, check_output_dir
from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.vocab.operator import initial_rows, padded_size, vocabulary_operator
from lep_plugin.vocab.options import ConvertOptions

# files of a tokenizer dir that are not part of the tokenizer (a model dir used as the tokenizer source)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_TOKENIZER_FILES = ("config.json", "generation_config.json")


def convert_embeddings(model, new_tok, old_tok, options: ConvertOptions = ConvertOptions()) -> int:
    """Give an in-memory HF model ``new_tok``'s vocabulary: T-initialised rows (never random), resized,
    config and generation-config ids updated. Returns the new number of rows."""
    params = embedding_parameters(model)  # one matrix when tied: one initialisation
    with gathered(params, modifier_rank=None):
        # a ZeRO-3 gather is freed on exit: keep a copy; a plain parameter is only read
        old = [p.detach().clone() if is_zero3_param(p) else p.detach() for p in params]
    rows = padded_size(len(new_tok), options.pad_to_multiple_of)
    operator = vocabulary_operator(new_tok, old_tok, options.weighting, rows, old[0].shape[0])
    new = [initial_rows(operator, matrix, len(old_tok)) for matrix in old]
    del old
    with torch.no_grad():
        model.resize_token_embeddings(rows, mean_resizing=False)
        targets = embedding_parameters(model)
        with gathered(targets, modifier_rank=0) as writes:
            if writes:
                for target, value in zip(targets, new):
                    target.data.copy_(value.to(device=target.device, dtype=target.dtype))
    update_config(model.config, old_tok, new_tok, rows)
    if getattr(model, "generation_config", None) is not None:
        update_config(model.generation_config, old_tok, new_tok, None)
    return rows


def convert_checkpoint(
    model_dir: Path, tokenizer_dir: Path, output: Path, options: ConvertOptions = ConvertOptions(), force: bool = False
) -> str:
    """Write ``model_dir`` converted to the tokenizer in ``tokenizer_dir``; returns a one-line summary."""
    model_dir, tokenizer_dir, output = Path(model_dir), Path(tokenizer_dir), Path(output)
    check_output_dir(output, force)
    check_no_overlap(output, {"model": model_dir, "tokenizer": tokenizer_dir})
    weights_dir = resolve_model_dir(model_dir, "model")
    config_dir = weights_dir if (weights_dir / "config.json").is_file() else model_dir
    checkpoint = open_checkpoint(weights_dir, "model", prefer_deepspeed=False)
    names = embedding_names(load_config(config_dir, "model"))
    old_tok, new_tok = load_tokenizer(config_dir), load_tokenizer(tokenizer_dir)
    input_name = resolve_name(checkpoint, names.input, "model")
    old_rows = checkpoint.shape(input_name)[0]
    rows = padded_size(len(new_tok), options.pad_to_multiple_of)
    operator = vocabulary_operator(new_tok, old_tok, options.weighting, rows, old_rows)  # refuses too few rows

    replacements = {input_name: initial_rows(operator, checkpoint.get(input_name), len(old_tok))}
    if not names.tied:
        output_name = resolve_name(checkpoint, names.output, "model")
        # a loader: the old lm_head is read only when its shard is written
        replacements[output_name] = lambda: initial_rows(operator, checkpoint.get(output_name), len(old_tok))

    with atomic_output_dir(output, force) as tmp:
        written = write_weights(checkpoint, tmp, replacements)
        write_config_files(config_dir, tmp, old_tok, new_tok, rows)
        for path in tokenizer_dir.iterdir():  # the new tokenizer as built: files, chat template, manifest
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name not in NOT_TOKENIZER_FILES:
                shutil.copyfile(path, tmp / path.name)
    return (
        f"wrote {output}: vocabulary {old_rows:,} → {rows:,} rows from {checkpoint.describe()} "
        f"({len(written['rewritten'])} shard(s) written, {len(written['copied'])} copied byte-exact)"
    )
