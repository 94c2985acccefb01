"""Importing the tokenizers that ship inside the ``mistral-common`` package (SentencePiece ``.model`` files
and Tekken ``.json``) as HF fast tokenizer dirs: the real vocabularies the tests and the demo run on."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lep_plugin.common.tokenizers import save_tokenizer_dir, tokenizer_json
from lep_plugin.errors import LEPError

# Mistral-style chat template used when an imported tokenizer has none (mistral-common's own templates
# are not exported to HF format by every version).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)


def set_bos_template(spec: dict[str, Any], bos: str, bos_id: int) -> None:
    """Make the post-processor insert ``bos`` (keeping a byte-level offsets step if present)."""
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    current = spec.get("post_processor")
    if current and current.get("type") == "ByteLevel":
        spec["post_processor"] = {"type": "Sequence", "processors": [current, template]}
    else:
        spec["post_processor"] = template


def import_mistral_common_tokenizer(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Convert a tokenizer file as shipped by ``mistral-common`` (SentencePiece ``.model`` or Tekken
    ``.json``) into an HF fast tokenizer dir that adds BOS and has a Mistral chat template."""
    from transformers import AutoTokenizer, LlamaTokenizer

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise LEPError(f"tokenizer file {source} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        if source.suffix == ".json":
            from transformers.integrations.mistral import convert_tekken_tokenizer

            tok = convert_tekken_tokenizer(str(source))
        else:
            shutil.copy(source, Path(tmp) / "tokenizer.model")
            tok = LlamaTokenizer.from_pretrained(tmp, legacy=False)
        tok.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        spec = tokenizer_json(tok)
        set_bos_template(spec, tok.bos_token, tok.bos_token_id)
        tok.chat_template = tok.chat_template or MISTRAL_CHAT_TEMPLATE
        output.mkdir(parents=True, exist_ok=True)
        save_tokenizer_dir(spec, tok, output)
    return output


def mistral_common_file(name: str) -> Path:
    """Path of a tokenizer file shipped inside the ``mistral-common`` package."""
    import importlib.resources

    data = Path(str(importlib.resources.files("mistral_common"))) / "data"
    path = data / name
    if not path.is_file():
        shipped = sorted(p.name for p in data.iterdir() if p.suffix in (".json", ".model") or ".model." in p.name)
        raise LEPError(f"mistral-common does not ship {name} (it ships: {', '.join(shipped)})")
    return path
