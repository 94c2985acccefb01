"""Checks of the publishing inputs a command takes (a Hub id, a ``lep eval --json`` file, a GGUF type), light enough to
run while the options are validated: a bad value is refused before any model or heavy library loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from lep_plugin.common.fs import read_json
from lep_plugin.errors import LEPError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# GGUF tensor types llama.cpp's converter writes (other quantisations: llama.cpp's llama-quantize)
OutType = Literal["f32", "f16", "bf16", "q8_0"]


def check_hub_id(value: str) -> str:
    """Validator for a Hub id option (``org/name``)."""
    if not HUB_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a Hub id (org/name)")
    return value


def eval_records(path: Path) -> list[dict[str, Any]]:
    """The result records of a ``lep eval --json`` file (checked, so a bad file fails before any work)."""
    # lazy: the table code loads the evaluation (torch); only a given eval file needs it
    from lep_plugin.evaluation.report import markdown_table

    payload = read_json(path, "eval JSON")
    records = payload.get("results") if isinstance(payload, dict) else None
    if not records or not all(isinstance(r, dict) and "model" in r and "texts" in r for r in records):
        raise LEPError(f"eval JSON {path} is not a `lep eval --json` file (no results with model and texts)")
    if not all("sentence_strict" in text for r in records for text in r["texts"].values()):
        raise LEPError(
            f"eval JSON {path} was written by an older `lep eval` (no strict copy scores): run `lep eval` again"
        )
    try:
        markdown_table(records)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise LEPError(f"eval JSON {path} does not hold `lep eval` results: {err!r} is missing or wrong") from None
    return records


def check_eval_json(path: Path | None) -> Path | None:
    """Validator for an ``eval_json`` option: the file is read and checked now."""
    if path is not None:
        eval_records(path)
    return path
