"""Several models on the same held-out samples, one after another (one model in memory at a time): the
result records, their JSON and the comparison plot. ``lep eval`` and ``lep.propagate.eval`` run this."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lep_plugin.common.fs import write_text_atomic
from lep_plugin.evaluation.evaluate import evaluate_model, load_model
from lep_plugin.evaluation.report import comparison_plot
from lep_plugin.evaluation.settings import EvalSettings
from lep_plugin.evaluation.tasks import CopyTasks


def compare_models(
    models: Sequence[tuple[str, Path]],
    tasks: Sequence[CopyTasks],
    settings: EvalSettings,
    device: str = "auto",
    dtype: str = "auto",
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The record of each ``(name, model dir)``, in order."""
    records = []
    for name, path in models:
        model, tokenizer = load_model(path, device, dtype)
        echo(f"evaluating {name} ...")
        records.append(evaluate_model(model, tokenizer, tasks, settings, name=name, progress=progress))
        del model
    return records


def results_json(records: list[dict[str, Any]], settings: EvalSettings, texts: Sequence[Path]) -> str:
    """What ``lep eval --json`` writes (and ``lep-merge --eval-json`` reads)."""
    payload = {"settings": EvalSettings.of(settings).model_dump(), "texts": [str(p) for p in texts], "results": records}
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def write_results(
    records: list[dict[str, Any]],
    settings: EvalSettings,
    texts: Sequence[Path],
    json_out: Path | None,
    plot_out: Path | None,
) -> None:
    if json_out is not None:
        write_text_atomic(json_out, results_json(records, settings, texts))
    if plot_out is not None:
        comparison_plot(records, plot_out)
