"""``lep-merge``: LEP step 4 from checkpoints on disk to a chat-ready model dir (arXiv:2412.21140, §3.4).

:func:`~lep_plugin.propagation.plan.plan_merge` (everything checked, nothing heavy loaded) → for each
embedding matrix: fit the systems, solve, apply each method's P to the adapted rows → write one model per
method (output atomic). Only the embedding/lm_head matrices are ever in memory: every other tensor of the
instruct model is copied shard by shard.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.writer import write_weights
from lep_plugin.common.fs import atomic_output_dir
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import trained_rows
from lep_plugin.propagation.methods import METHODS, SYSTEMS, FitSystem, systems_for
from lep_plugin.propagation.options import MergeOptions
from lep_plugin.propagation.output import (
    chars_per_token,
    recommendation,
    summary_text,
    with_added_rows,
    write_tokenizer_and_configs,
)
from lep_plugin.propagation.plan import Matrix, Plan, plan_merge

REPORT = "lep_merge.json"
SPILL = ".lep-spill"  # finished matrices wait here (inside the atomic output) until their shard is written


def run_merge(options: MergeOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, fit and write. Returns the summary (also written as ``lep_merge.json`` in the output)."""
    started = time.time()
    plan = plan_merge(options)
    echo(plan.describe())
    if options.dry_run:
        return {"dry_run": True, "plan": plan.describe()}
    systems = _prepare_systems(plan)
    device = compute_device(options.device, plan, echo)
    report: dict[str, Any] = {
        "methods": plan.methods,
        "device": str(device),
        "inputs": {role: plan.checkpoint(role).describe() for role in ("base", "instruct", "adapted")},
        "tied": plan.tied,
        "out_rows": plan.out_rows,
        "fits": {},
    }
    with atomic_output_dir(options.output, options.force) as tmp:
        spill = tmp / SPILL
        spill.mkdir()
        results: dict[str, dict[str, Path]] = {method: {} for method in plan.methods}
        for matrix in plan.matrices:
            report["fits"][matrix.role] = _propagate(plan, matrix, systems, spill, results, device)
        report["recommendation"] = recommendation(report)
        for method in plan.methods:
            target = tmp if len(plan.methods) == 1 else tmp / method
            target.mkdir(exist_ok=True)
            _write_model(plan, method, results[method], target, report)
        shutil.rmtree(spill)
        report["chars_per_token"] = chars_per_token(plan)
        report["output_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        report["seconds"] = round(time.time() - started, 2)
        if len(plan.methods) > 1:
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    echo(summary_text(report, options.output))
    return report


def compute_device(choice: str, plan: Plan, echo: Callable[[str], None]) -> torch.device:
    """The ``--device`` of the fit, solve and apply; a GPU without room for them falls back to the CPU.

    On the device at once: AᵀA and AᵀB (d×d float64 each), one (A, B) block pair in float64 and one block
    of adapted rows with its product (float32), plus the same again as headroom for temporaries.
    """
    from lep_plugin.common.devices import free_bytes, resolve_device

    device = resolve_device(choice)
    free = free_bytes(device)
    if free is None:
        return device
    dim, rows = max(m.dim for m in plan.matrices), plan.options.block_rows
    needed = 2 * (2 * dim * dim * 8 + 2 * rows * dim * 8 + 2 * rows * dim * 4)
    if free < needed:
        echo(f"note: {device} has {free / 2**30:.1f} GiB free, the fit needs {needed / 2**30:.1f} GiB: computing on the CPU")
        return torch.device("cpu")
    return device


def _prepare_systems(plan: Plan) -> dict[str, FitSystem]:
    names = systems_for(plan.methods, compare_all=plan.options.method == "all")
    rows = plan.matrices[0].shapes["adapted"][0]
    return {name: SYSTEMS[name].for_tokenizers(plan.new_tok, plan.old_tok, plan.options.weighting, rows) for name in names}


def _bar(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=None, file=sys.stderr)


def _counted(blocks, bar):
    for a, b in blocks:
        bar.update(a.shape[0])
        yield a, b


def _fit(
    plan: Plan, matrix: Matrix, systems: dict[str, FitSystem], device: torch.device
) -> tuple[dict[str, prop.NormalEquations], dict[int, torch.Tensor]]:
    """Normal equations of each system for ``matrix`` (on ``device``; the blocks are gathered on the CPU,
    where the checkpoints are read), and the instruct rows of the added tokens."""
    base = plan.checkpoint("base").get(matrix.names["base"])
    instruct = plan.checkpoint("instruct").get(matrix.names["instruct"])
    trained = trained_rows(base[: len(plan.old_tok)])
    equations = {}
    for name, system in systems.items():
        with _bar(system.rows(), f"{name} fit ({matrix.role})") as bar:
            blocks = system.blocks(base, instruct, trained, plan.options.block_rows)
            equations[name] = prop.accumulate(_counted(blocks, bar), matrix.dim, device)
    added_rows = {a.instruct_id: instruct[a.instruct_id].clone() for a in plan.added if a.instruct_id < instruct.shape[0]}
    return equations, added_rows


def _fit_report(method: str, equations: dict[str, prop.NormalEquations], solutions: dict[str, prop.Solution]) -> dict[str, Any]:
    """How well ``method``'s P fits every system (its own residual comes with the solve)."""
    own = METHODS[method]
    p = None if own is None else solutions[own].p
    report: dict[str, Any] = {
        f"residual_on_{name}": solutions[name].residual if name == own else prop.relative_residual(eq, p)
        for name, eq in equations.items()
    }
    if own is not None:
        report |= {"solver": solutions[own].solver, "condition": solutions[own].condition}
    return report


def _propagate(
    plan: Plan, matrix: Matrix, systems, spill: Path, results: dict[str, dict[str, Path]], device: torch.device
) -> dict[str, Any]:
    """Fit, solve and apply every method to one matrix; the results wait in ``spill``. Returns the fits."""
    from safetensors.torch import save_file

    equations, added_rows = _fit(plan, matrix, systems, device)
    solutions = {name: prop.solve(eq) for name, eq in equations.items()}
    fits = {method: _fit_report(method, equations, solutions) for method in plan.methods}
    del equations
    adapted = plan.checkpoint("adapted").get(matrix.names["adapted"])
    for method in plan.methods:
        p = None if METHODS[method] is None else solutions[METHODS[method]].p
        with _bar(adapted.shape[0], f"{method}: apply ({matrix.role})") as bar:
            out = prop.apply_correction(adapted, p, matrix.dtype, plan.options.block_rows, bar.update)
        path = spill / f"{method}-{matrix.role}.safetensors"
        save_file({"t": with_added_rows(out, plan, added_rows)}, str(path))
        results[method][matrix.names["instruct"]] = path
        del out
    return fits


class _Spilled:
    """A replacement tensor read from its spill file only when its shard is written."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path))["t"]


def _write_model(plan: Plan, method: str, spilled: dict[str, Path], target: Path, report: dict[str, Any]) -> None:
    instruct = plan.checkpoint("instruct")
    with _bar(instruct.nbytes(), f"{method}: write", "B") as bar:
        written = write_weights(instruct, target, {name: _Spilled(path) for name, path in spilled.items()}, bar.update)
    write_tokenizer_and_configs(plan, target)
    method_report = {
        "method": method,
        "fits": {role: fits[method] for role, fits in report["fits"].items()},
        "shards_copied": written["copied"],
        "shards_rewritten": written["rewritten"],
        "tensor_bytes": written["bytes"],
        **{k: report[k] for k in ("device", "inputs", "tied", "out_rows")},
    }
    (target / REPORT).write_text(json.dumps(method_report, indent=2) + "\n", encoding="utf-8")
    from lep_plugin.publish.outputs import finish_merge_output

    finish_merge_output(plan, method, target, report)  # model card, lep_vocab.json, original_tokenizer/
