"""``lep vocab convert``: a full HF model dir with the new vocabulary, streamed shard by shard.

Only the embedding and lm_head matrices are ever in memory; every other tensor is copied as stored
(``lep_plugin.io.checkpoints.write_weights``). This is the offline path for ZeRO-3 users and for anyone
who prefers a ready checkpoint to in-process conversion by the Axolotl plugin.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lep_plugin.errors import LEPError
from lep_plugin.io.atomic import atomic_output_dir, check_output_dir
from lep_plugin.io.checkpoints import embedding_names, load_config, open_checkpoint, resolve_name, write_weights
from lep_plugin.io.tokenizers import load_tokenizer
from lep_plugin.io.vocab_operator import padded_size, update_config_ids, vocabulary_operator
from lep_plugin.math.operator import apply_operator

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def convert_checkpoint(
    model_dir: Path,
    tokenizer_dir: Path,
    output: Path,
    pad_to_multiple_of: int | None = None,
    weighting: str = "mean",
    force: bool = False,
) -> str:
    """Write ``model_dir`` converted to the tokenizer in ``tokenizer_dir``; returns a one-line summary."""
    model_dir, tokenizer_dir, output = Path(model_dir), Path(tokenizer_dir), Path(output)
    check_output_dir(output, force)
    if output.resolve() in (model_dir.resolve(), tokenizer_dir.resolve()):
        raise LEPError(f"output {output} would overwrite an input")
    checkpoint = open_checkpoint(model_dir, "model", prefer_deepspeed=False)
    config = load_config(model_dir, "model")
    names = embedding_names(config)
    old_tok, new_tok = load_tokenizer(model_dir), load_tokenizer(tokenizer_dir)
    input_name = resolve_name(checkpoint, names.input, "model")
    old_rows = checkpoint.shape(input_name)[0]
    rows = padded_size(len(new_tok), pad_to_multiple_of)
    operator = vocabulary_operator(new_tok, old_tok, weighting, rows, old_rows)  # refuses too few model rows

    replacements = {input_name: apply_operator(operator, checkpoint.get(input_name))}
    if not names.tied:
        output_name = resolve_name(checkpoint, names.output, "model")
        # a loader: the old lm_head is read only when its shard is written
        replacements[output_name] = lambda: apply_operator(operator, checkpoint.get(output_name))

    with atomic_output_dir(output, force) as tmp:
        written = write_weights(checkpoint, tmp, replacements)
        update_config_ids(config, new_tok, rows)
        config.save_pretrained(str(tmp))
        if (model_dir / "generation_config.json").is_file():
            from transformers import GenerationConfig

            generation = GenerationConfig.from_pretrained(str(model_dir))
            update_config_ids(generation, new_tok, None)
            generation.save_pretrained(str(tmp))
        for path in tokenizer_dir.iterdir():  # the new tokenizer as built: files, chat template, manifest
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name != "config.json":
                shutil.copyfile(path, tmp / path.name)
    return (
        f"wrote {output}: vocabulary {old_rows:,} → {rows:,} rows "
        f"({len(written['rewritten'])} shard(s) rewritten, {len(written['copied'])} copied byte-exact)"
    )
