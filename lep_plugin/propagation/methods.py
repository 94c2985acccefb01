"""The propagation methods (LEP step 4; arXiv:2412.21140, §3.4) as a registry.

A method (an entry of :data:`METHODS`, with its own summary) fits the d×d correction P on one least-squares
*system* ``min ‖A·P − B‖`` of old-vocabulary rows, or uses P = I. Every system a run needs is fitted once per
matrix, so ``--method all`` compares each P on each system.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from lep_plugin.errors import LEPError
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import Weighting
from lep_plugin.vocab.operator import vocabulary_operator

Blocks = Iterator[tuple[torch.Tensor, torch.Tensor]]


class FitSystem(Protocol):
    """A least-squares system built from the old base and instruct matrices of one role."""

    def rows(self) -> int:
        """How many rows the system has (for progress)."""

    def blocks(
        self,
        base: torch.Tensor,
        instruct: torch.Tensor,
        trained: torch.Tensor,
        block_rows: int,
        dtype: torch.dtype = torch.float64,
    ) -> Blocks:
        """(A, B) row blocks in ``dtype`` (the fit's precision); ``trained`` marks the base rows that were
        trained (never average the others)."""


@dataclass(frozen=True)
class OverlapSystem:
    old_ids: torch.Tensor  # old ids of the tokens whose strings both vocabularies have

    @classmethod
    def for_tokenizers(cls, new_tok, old_tok, weighting: Weighting, rows: int) -> OverlapSystem:
        _, old_ids = prop.shared_token_ids(new_tok.get_vocab(), old_tok.get_vocab())
        old_ids = old_ids[old_ids < len(old_tok)]
        if old_ids.numel() == 0:
            raise LEPError("the old and new vocabularies share no token: the overlap method has nothing to fit")
        return cls(old_ids)

    def rows(self) -> int:
        return self.old_ids.numel()

    def blocks(self, base, instruct, trained, block_rows, dtype=torch.float64) -> Blocks:
        ids = self.old_ids[trained[self.old_ids]]
        return prop.overlap_blocks(base, instruct, ids, block_rows, dtype)


@dataclass(frozen=True)
class ConversionSystem:
    operator: torch.Tensor  # sparse T, new rows × old rows

    @classmethod
    def for_tokenizers(cls, new_tok, old_tok, weighting: Weighting, rows: int) -> ConversionSystem:

        return cls(vocabulary_operator(new_tok, old_tok, weighting, rows, len(old_tok)))

    def rows(self) -> int:
        return self.operator.shape[0]

    def blocks(self, base, instruct, trained, block_rows, dtype=torch.float64) -> Blocks:
        return prop.operator_blocks(self.operator, base, instruct, trained[: self.operator.shape[1]], block_rows, dtype)


@dataclass(frozen=True)
class PropagationMethod:
    """One way to carry the trained embeddings into the instruct model."""

    name: str
    system: str | None  # the least-squares system (a key of SYSTEMS) its P is fitted on; None: P = I
    summary: str  # one line, shown in --help, the settings reference and the model card
    reference: str = "arXiv:2412.21140, §3.4"


METHODS: dict[str, PropagationMethod] = {
    m.name: m
    for m in (
        PropagationMethod("swap", None, "the trained embeddings used as they are (P = identity)"),
        PropagationMethod("overlap", "overlap", "P fitted by least squares on the tokens both vocabularies share"),
        PropagationMethod(
            "conversion",
            "conversion",
            "P fitted by least squares on both old embedding matrices mapped into the new vocabulary by the "
            "averaging operator T (the paper's default)",
        ),
    )
}
SYSTEMS: dict[str, type] = {"overlap": OverlapSystem, "conversion": ConversionSystem}


def methods_of(choice: str) -> list[str]:
    """The methods a ``--method`` choice writes."""
    return list(METHODS) if choice == "all" else [choice]


def systems_for(methods: list[str], compare_all: bool) -> list[str]:
    """The systems to fit: each method's own, or every system when the run compares methods."""
    if compare_all:
        return list(SYSTEMS)
    return [METHODS[m].system for m in methods if METHODS[m].system is not None]
