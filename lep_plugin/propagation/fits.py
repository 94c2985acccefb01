"""What a ``lep-merge`` fit found, typed: how each method's P fits each least-squares system of each
embedding matrix. ``run.py`` builds it; the summary, the recommendation and the model card read it;
``lep_merge.json`` keeps its plain JSON form (:meth:`FitResult.to_json`: ``residual_on_<system>``,
``solver``, ``condition``, ``swap_residual_on_<system>``, ``precision``, ``precision_reason``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the systems a method can be compared on, widest first: conversion has a row per new token, overlap only
# the tokens both vocabularies share
WIDEST_FIRST = ("conversion", "overlap")


@dataclass(frozen=True)
class FitResult:
    """How one method's P fits one matrix: its relative residual ‖AP − B‖/‖B‖ on every system fitted."""

    residuals: dict[str, float]  # system -> relative residual of this method's P on it
    system: str | None = None  # the method's own system; None: P = identity (swap)
    solver: str | None = None  # of the own system's solve
    condition: float | None = None  # condition estimate of the own system's AᵀA
    swap_residual: float | None = None  # P = identity on the own system: what the correction gained
    precision: str | None = None  # "mixed" or "exact"; None when no system was fitted
    precision_reason: str | None = None

    def widest_system(self) -> str | None:
        """The widest system this result has a residual on (the one methods are compared on)."""
        return next((s for s in WIDEST_FIRST if s in self.residuals), None)

    def shown_system(self) -> str | None:
        """The system whose residual describes this method: its own, or for swap the widest fitted."""
        return self.system or self.widest_system()

    def to_json(self) -> dict[str, Any]:
        """The plain form ``lep_merge.json`` keeps (its keys as before the type: readers of the file are unchanged)."""
        out: dict[str, Any] = {f"residual_on_{name}": value for name, value in self.residuals.items()}
        if self.system is not None:
            out |= {"solver": self.solver, "condition": self.condition}
            out[f"swap_residual_on_{self.system}"] = self.swap_residual
        if self.precision is not None:
            out |= {"precision": self.precision, "precision_reason": self.precision_reason}
        return out


# matrix side ("input" / "output") -> method -> its fit, in the order the methods were written
Fits = dict[str, dict[str, FitResult]]


def fits_json(fits: Fits) -> dict[str, dict[str, dict[str, Any]]]:
    """``fits`` as ``lep_merge.json``'s ``fits``: side -> method -> :meth:`FitResult.to_json`."""
    return {side: {method: fit.to_json() for method, fit in by_method.items()} for side, by_method in fits.items()}


# a relative residual this near 1: P explains nothing of the instruct embeddings by the base's (a wrong base)
UNRELATED_RESIDUAL = 0.9


def unrelated_warning(fits: Fits, method: str) -> str | None:
    """A warning when ``method``'s fit residual says base and instruct are unrelated models, else None."""
    high = {}
    for side, by_method in fits.items():
        fit = by_method.get(method)
        system = fit.shown_system() if fit is not None else None
        value = fit.residuals.get(system) if system else None
        if value is not None and value >= UNRELATED_RESIDUAL:
            high[side] = value
    if not high:
        return None
    where = ", ".join(f"{side} {value:.3f}" for side, value in high.items())
    return (
        f"warning: the fit residual is {where} (near 1): the base model's embeddings do not explain the instruct "
        "model's; is --base the model the instruct model was tuned from?"
    )
