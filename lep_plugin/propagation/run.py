"""``lep-merge``: LEP step 4 from checkpoints on disk to a chat-ready model dir (arXiv:2412.21140, §3.4).

:func:`~lep_plugin.propagation.plan.plan_merge` (everything checked, nothing heavy loaded) → for each
embedding matrix: fit the systems, solve, apply each method's P to the adapted rows → write one model per
method (output atomic). Only the embedding/lm_head matrices are ever in memory: every other tensor of the
instruct model is copied shard by shard.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from lep_plugin.checkpoints.writer import write_weights
from lep_plugin.common.devices import free_bytes, resolve_device
from lep_plugin.common.fs import atomic_output_dir
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import trained_rows
from lep_plugin.propagation.fits import FitResult, Fits, fits_json, unrelated_warning
from lep_plugin.propagation.lora import body_replacements, write_body_adapter
from lep_plugin.propagation.methods import METHODS, systems_for
from lep_plugin.propagation.options import MergeOptions
from lep_plugin.propagation.output import (
    recommendation,
    summary_text,
    with_added_rows,
    write_tokenizer_and_configs,
)
from lep_plugin.propagation.plan import ROLES, Matrix, Plan, plan_merge
from lep_plugin.propagation.systems import SYSTEMS, FitSystem
from lep_plugin.publish.outputs import finish_merge_output, merge_facts

REPORT = "lep_merge.json"
SPILL = ".lep-spill"  # finished matrices wait here (inside the atomic output) until their shard is written


class WrittenModelStages(Protocol):
    """What runs on the written models inside the atomic output, before it is in place (``lep.propagate``'s
    evaluation and GGUF export): a failure there leaves no output, as a failed merge does.
    ``models``: method -> the model dir being written; ``names``: method -> the path it will have."""

    def evaluate(self, root: Path, models: dict[str, Path], names: dict[str, Path]) -> list[dict[str, Any]] | None:
        """The ``lep eval`` records for the model cards (written before them), or None."""

    def export(self, root: Path, models: dict[str, Path], names: dict[str, Path]) -> None:
        """Runs once the cards are written."""


def run_merge(
    options: MergeOptions, echo: Callable[[str], None] = print, stages: WrittenModelStages | None = None
) -> dict[str, Any]:
    """Plan, fit and write (then ``stages`` on the written models). Returns the summary (also written as
    ``lep_merge.json`` in the output)."""
    started = time.time()
    plan = plan_merge(options)
    echo(plan.describe())
    if options.dry_run:
        return {"dry_run": True, "plan": plan.describe()}
    facts = merge_facts(plan)  # the cards' facts, characters per token included: once for every method
    systems = _prepare_systems(plan)
    device = compute_device(options.device, plan, echo)
    report: dict[str, Any] = {
        "methods": plan.methods,
        "device": str(device),
        "inputs": {role: plan.checkpoint(role).describe() for role in ROLES},
        "tied": plan.tied,
        "out_rows": plan.out_rows,
        "fits": {},
    }
    if plan.body_lora is not None:
        report["body_lora"] = plan.body_lora.report()
    with atomic_output_dir(options.output, options.force) as tmp:
        spill = tmp / SPILL
        spill.mkdir()
        results: dict[str, dict[str, Path]] = {method: {} for method in plan.methods}
        fits: Fits = {m.side: _propagate(plan, m, systems, spill, results, device) for m in plan.matrices}
        report["fits"] = fits_json(fits)
        warnings = [w for w in (unrelated_warning(fits, method) for method in plan.methods) if w]
        for warning in dict.fromkeys(warnings):
            echo(warning)
        report["warnings"] = list(dict.fromkeys(warnings))
        report["recommendation"] = recommendation(plan.methods, fits)
        targets = {m: tmp if len(plan.methods) == 1 else tmp / m for m in plan.methods}
        names = {m: options.output if len(plan.methods) == 1 else options.output / m for m in plan.methods}
        for method, target in targets.items():
            target.mkdir(exist_ok=True)
            _write_model(plan, method, results[method], target, report)
        shutil.rmtree(spill)
        records = stages.evaluate(tmp, targets, names) if stages is not None else None
        if records:
            facts = dataclasses.replace(facts, records=records)
        for method, target in targets.items():
            finish_merge_output(plan, method, target, facts, fits)  # model card, lep_vocab.json, original_tokenizer/
        if stages is not None:
            stages.export(tmp, targets, names)
        # the summary's figure is the cards' measurement, printed only when --sample-text named its text
        printed = options.sample_text is not None and facts.measured is not None
        report["chars_per_token"] = facts.measured.values if printed else None
        report["output_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        report["seconds"] = round(time.time() - started, 2)
        if len(plan.methods) > 1:
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    echo(summary_text(report, fits, options.output))
    return report


def compute_device(choice: str, plan: Plan, echo: Callable[[str], None]) -> torch.device:
    """The ``--device`` of the fit, solve and apply; a GPU without room for them falls back to the CPU.

    On the device at once: AᵀA and AᵀB (d×d float64 each), one (A, B) block pair in float64 and one block
    of adapted rows with its product (float32), plus the same again as headroom for temporaries.
    """

    device = resolve_device(choice)
    free = free_bytes(device)
    if free is None:
        return device
    dim, rows = max(m.dim for m in plan.matrices), plan.options.block_rows
    needed = 2 * (2 * dim * dim * 8 + 2 * rows * dim * 8 + 2 * rows * dim * 4)
    if free < needed:
        echo(
            f"note: {device} has {free / 2**30:.1f} GiB free, the fit needs {needed / 2**30:.1f} GiB: "
            "computing on the CPU"
        )
        return torch.device("cpu")
    return device


def _prepare_systems(plan: Plan) -> dict[str, FitSystem]:
    names = systems_for(plan.methods, compare_all=len(plan.methods) > 1)
    rows = plan.matrices[0].shapes["adapted"][0]
    return {
        name: SYSTEMS[name].for_tokenizers(plan.new_tok, plan.old_tok, plan.options.weighting, rows) for name in names
    }


def _bar(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=None, file=sys.stderr)


def _counted(blocks, bar):
    for a, b in blocks:
        bar.update(a.shape[0])
        yield a, b


def _fit(
    plan: Plan, matrix: Matrix, systems: dict[str, FitSystem], device: torch.device, precision: prop.Precision
) -> tuple[dict[str, prop.NormalEquations], dict[int, torch.Tensor]]:
    """Normal equations of each system for ``matrix`` (on ``device``; the blocks are gathered on the CPU,
    where the checkpoints are read), and the instruct rows of the added tokens."""
    base = plan.checkpoint("base").get(matrix.names["base"])
    instruct = plan.checkpoint("instruct").get(matrix.names["instruct"])
    trained = trained_rows(base[: plan.old_size])
    equations = {}
    for name, system in systems.items():
        with _bar(system.rows(), f"{name} fit ({matrix.side}, {precision})") as bar:
            blocks = system.blocks(base, instruct, trained, plan.options.block_rows, prop.accumulator_dtype(precision))
            equations[name] = prop.accumulate(_counted(blocks, bar), matrix.dim, device, precision)
    added_rows = {
        a.instruct_id: instruct[a.instruct_id].clone() for a in plan.added if a.instruct_id < instruct.shape[0]
    }
    return equations, added_rows


def fit_precision(requested: str, out_dtype: torch.dtype) -> tuple[prop.Precision, str]:
    """The precision a fit starts in, and why: float32 (mixed) only for a 16-bit output, whose rounding
    (2⁻⁸ relative for bf16) is far coarser than a float32 fit's error; float64 when asked or when the
    output keeps more digits."""
    dtype = str(out_dtype).removeprefix("torch.")
    if requested == "exact":
        return "exact", "float64 fit: --precision exact"
    if out_dtype in (torch.bfloat16, torch.float16):
        return "mixed", f"float32 fit: the output is {dtype}"
    return "exact", f"float64 fit: the output is {dtype}, finer than a float32 fit's error"


def _fit_and_solve(plan: Plan, matrix: Matrix, systems: dict[str, FitSystem], device: torch.device):
    """Fit and solve every system in the precision the output needs: a mixed fit whose condition estimate
    says it could change the stored result is refitted in float64 (one more pass over the rows)."""
    precision, reason = fit_precision(plan.options.precision, matrix.dtype)
    equations, added_rows = _fit(plan, matrix, systems, device, precision)
    solutions = {name: prop.solve(eq) for name, eq in equations.items()}
    if precision == "mixed" and solutions:
        ulps = {name: prop.mixed_error_estimate(s) / torch.finfo(matrix.dtype).eps for name, s in solutions.items()}
        worst = max(ulps, key=ulps.get)
        estimate = f"condition of AᵀA ~{solutions[worst].condition:.3g}, estimated output error {ulps[worst]:.2g} ulp"
        if all(prop.mixed_fit_trusted(s, matrix.dtype) for s in solutions.values()):
            reason += f" ({worst}: {estimate})"
        else:
            precision, reason = (
                "exact",
                (
                    "float64 fit: the float32 fit could change the stored "
                    f"{str(matrix.dtype).removeprefix('torch.')} result ({worst}: {estimate}, "
                    f"solver {solutions[worst].solver})"
                ),
            )
            equations, added_rows = _fit(plan, matrix, systems, device, precision)
            solutions = {name: prop.solve(eq) for name, eq in equations.items()}
    return equations, solutions, added_rows, (precision, reason)


def _fit_result(
    method: str,
    equations: dict[str, prop.NormalEquations],
    solutions: dict[str, prop.Solution],
    precision: tuple[str, str] | None,
) -> FitResult:
    """How well ``method``'s P fits every system (its own residual comes with the solve); ``precision``:
    the fit's precision and why, None when no system was fitted."""
    own = METHODS[method].system
    p = None if own is None else solutions[own].p
    residuals = {
        name: solutions[name].residual if name == own else prop.relative_residual(eq, p)
        for name, eq in equations.items()
    }
    used, reason = precision or (None, None)
    if own is None:
        return FitResult(residuals, precision=used, precision_reason=reason)
    return FitResult(
        residuals,
        system=own,
        solver=solutions[own].solver,
        condition=solutions[own].condition,
        # P = identity on the same system: what the correction gained, for the model card's reading guide
        swap_residual=prop.relative_residual(equations[own], None),
        precision=used,
        precision_reason=reason,
    )


def _propagate(
    plan: Plan, matrix: Matrix, systems, spill: Path, results: dict[str, dict[str, Path]], device: torch.device
) -> dict[str, FitResult]:
    """Fit, solve and apply every method to one matrix; the results wait in ``spill``. Returns each
    method's fit."""
    from safetensors.torch import save_file

    equations, solutions, added_rows, precision = _fit_and_solve(plan, matrix, systems, device)
    fits = {
        method: _fit_result(method, equations, solutions, precision if solutions else None) for method in plan.methods
    }
    del equations
    adapted = plan.checkpoint("adapted").get(matrix.names["adapted"])
    for method in plan.methods:
        own = METHODS[method].system
        p = None if own is None else solutions[own].p
        with _bar(adapted.shape[0], f"{method}: apply ({matrix.side})") as bar:
            out = prop.apply_correction(adapted, p, matrix.dtype, plan.options.block_rows, bar.update)
        path = spill / f"{method}-{matrix.side}.safetensors"
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
        replacements = {name: _Spilled(path) for name, path in spilled.items()} | body_replacements(
            plan.body_lora, instruct
        )
        written = write_weights(instruct, target, replacements, bar.update)
    write_tokenizer_and_configs(plan, target)
    write_body_adapter(
        plan.body_lora, target, plan.options.output if len(plan.methods) == 1 else plan.options.output / method
    )
    method_report = {
        "method": method,
        "fits": {side: by_method[method] for side, by_method in report["fits"].items()},
        "shards_copied": written["copied"],
        "shards_rewritten": written["rewritten"],
        "tensor_bytes": written["bytes"],
        **{k: report[k] for k in ("device", "inputs", "tied", "out_rows", "warnings")},
    }
    if plan.body_lora is not None:
        method_report["body_lora"] = plan.body_lora.report()
    (target / REPORT).write_text(json.dumps(method_report, indent=2) + "\n", encoding="utf-8")
