"""What a model's config says that LEP must keep right: which tensors are the embeddings, whether they are
tied, and the special-token ids (``config.json`` and ``generation_config.json``) after a vocabulary change.

One rule each, used by ``lep vocab convert``, the plugin and ``lep-merge``:

* tied: the output embedding is the input one (same parameter, or so declared by the config), or the
  model has none;
* special ids: every id is mapped by its token *string* from the old tokenizer to the new one, lists kept
  whole (Llama-3-Instruct ends turns on ``[<|end_of_text|>, <|eom_id|>, <|eot_id|>]``); an id whose token
  the new tokenizer lacks is dropped from a list, or replaced by the new tokenizer's own token of that role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lep_plugin.errors import LEPError

SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"


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

    if not (Path(path) / CONFIG).is_file():
        raise LEPError(f"{what} {path} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for unknown/broken configs
        raise LEPError(f"cannot read the config of {what} {path}: {str(err).splitlines()[0]}") from None


def is_tied(config) -> bool:
    """Whether the config ties the output embedding to the input one (multimodal configs: the text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))


def untied_output_embedding(model):
    """The output embedding module, or None when the model has none or it is the input matrix: the same
    parameter, or declared tied by the config (a model built on the meta device is not tied yet)."""
    embed_in = model.get_input_embeddings()
    embed_out = model.get_output_embeddings()
    if embed_out is None or embed_out.weight is embed_in.weight or is_tied(model.config):
        return None
    return embed_out


def embedding_parameters(model) -> list:
    """The input embedding matrix and, if untied, the output (lm_head) matrix."""
    embed_out = untied_output_embedding(model)
    return [model.get_input_embeddings().weight] + ([] if embed_out is None else [embed_out.weight])


def embedding_names(config) -> EmbeddingNames:
    """Names from the model class: build it on the meta device (no memory, no weights) and map the
    parameter objects of its embeddings back to names."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:
        raise LEPError(
            f"cannot build a causal LM of type {getattr(config, 'model_type', '?')}: {str(err).splitlines()[0]}"
        ) from None
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    embed_in = model.get_input_embeddings()
    if embed_in is None or id(embed_in.weight) not in names:
        raise LEPError(f"model type {config.model_type} has no input embedding")
    embed_out = untied_output_embedding(model)
    return EmbeddingNames(names[id(embed_in.weight)], None if embed_out is None else names[id(embed_out.weight)])


# ------------------------------------------------------------------------------------- special ids


def remap_token_ids(value: Any, old_tok, new_tok) -> Any:
    """An id (or list of ids) of ``old_tok`` as the same token strings' ids in ``new_tok``.

    Ids whose token ``new_tok`` lacks become None (and leave a list); non-ids pass through unchanged.
    """
    if isinstance(value, (list, tuple)):
        mapped = [remap_token_ids(v, old_tok, new_tok) for v in value]
        return [v for v in mapped if v is not None]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return value
    token = old_tok.convert_ids_to_tokens(value)
    if token is None:
        return None
    new_id = new_tok.convert_tokens_to_ids(token)
    if new_id is None or (new_id == new_tok.unk_token_id and token != new_tok.unk_token):
        return None
    return new_id


def remap_special_ids(values: dict[str, Any], old_tok, new_tok) -> dict[str, Any]:
    """New values of the special-id keys present in ``values`` (a config or generation config).

    A key the old config left None stays None unless the new tokenizer defines that token (pad): a model
    that had no pad id gets the tokenizer's, as ``save_pretrained`` of a resized model would write it.
    """
    out: dict[str, Any] = {}
    for key in SPECIAL_ID_KEYS:
        if key not in values:
            continue
        own = getattr(new_tok, key, None)
        mapped = remap_token_ids(values[key], old_tok, new_tok) if values[key] is not None else None
        if mapped is None or mapped == []:
            mapped = own
        out[key] = mapped
    return out


def _holders(config: Any) -> list[Any]:
    """The config and its text sub-config (multimodal models keep vocab and ids there), dict or object."""
    if isinstance(config, dict):
        text = config.get("text_config")
    else:
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
    return [config] + ([text] if text is not None and text is not config else [])


def update_config(config: Any, old_tok, new_tok, vocab_size: int | None) -> None:
    """Set ``vocab_size`` (if given) and remap the special ids of a config, as a dict or a config object."""
    for holder in _holders(config):
        is_dict = isinstance(holder, dict)
        present = {
            k: (holder.get(k) if is_dict else getattr(holder, k))
            for k in SPECIAL_ID_KEYS
            if (k in holder if is_dict else hasattr(holder, k))
        }
        updates = remap_special_ids(present, old_tok, new_tok)
        if vocab_size is not None and (
            holder is config or ("vocab_size" in holder if is_dict else hasattr(holder, "vocab_size"))
        ):
            updates["vocab_size"] = vocab_size
        for key, value in updates.items():
            if is_dict:
                holder[key] = value
            else:
                setattr(holder, key, value)


def write_config_files(source_dir: Path, target_dir: Path, old_tok, new_tok, vocab_size: int) -> None:
    """``config.json`` (and ``generation_config.json`` if present) of ``source_dir`` with the new vocabulary's
    size and ids, written to ``target_dir``. The JSON is edited in place, so every other key is kept as is."""
    for name, size in ((CONFIG, vocab_size), (GENERATION_CONFIG, None)):
        path = Path(source_dir) / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        update_config(config, old_tok, new_tok, size)
        (Path(target_dir) / name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
