"""The propagation methods (LEP step 4; arXiv:2412.21140, §3.4) as a registry.

A method fits the d×d correction P on one least-squares *system* ``min ‖A·P − B‖`` of old-vocabulary rows,
or uses P = I:

* ``swap``       – no system: the adapted rows as they are;
* ``overlap``    – A, B = base and instruct rows of the tokens both vocabularies share;
* ``conversion`` – A, B = T·base and T·instruct with the vocabulary operator T (the authors' default).

Every system a run needs is fitted once per matrix, so ``--method all`` compares each P on each system.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from lep_plugin.errors import LEPError
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import Weighting

Blocks = Iterator[tuple[torch.Tensor, torch.Tensor]]


class FitSystem(Protocol):
    """A least-squares system built from the old base and instruct matrices of one role."""

    def rows(self) -> int:
        """How many rows the system has (for progress)."""

    def blocks(self, base: torch.Tensor, instruct: torch.Tensor, trained: torch.Tensor, block_rows: int) -> Blocks:
        """(A, B) row blocks; ``trained`` marks the base rows that were trained (never average the others)."""


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

    def blocks(self, base, instruct, trained, block_rows) -> Blocks:
        ids = self.old_ids[trained[self.old_ids]]
        return prop.overlap_blocks(base, instruct, ids, block_rows)


@dataclass(frozen=True)
class ConversionSystem:
    operator: torch.Tensor  # sparse T, new rows × old rows

    @classmethod
    def for_tokenizers(cls, new_tok, old_tok, weighting: Weighting, rows: int) -> ConversionSystem:
        from lep_plugin.vocab.operator import vocabulary_operator

        return cls(vocabulary_operator(new_tok, old_tok, weighting, rows, len(old_tok)))

    def rows(self) -> int:
        return self.operator.shape[0]

    def blocks(self, base, instruct, trained, block_rows) -> Blocks:
        return prop.operator_blocks(self.operator, base, instruct, trained[: self.operator.shape[1]], block_rows)


# method -> the system its P is fitted on (None: P = I)
METHODS: dict[str, str | None] = {"swap": None, "overlap": "overlap", "conversion": "conversion"}
SYSTEMS: dict[str, type] = {"overlap": OverlapSystem, "conversion": ConversionSystem}


def methods_of(choice: str) -> list[str]:
    """The methods a ``--method`` choice writes."""
    return list(METHODS) if choice == "all" else [choice]


def systems_for(methods: list[str], compare_all: bool) -> list[str]:
    """The systems to fit: each method's own, or every system when the run compares methods."""
    if compare_all:
        return list(SYSTEMS)
    return [METHODS[m] for m in methods if METHODS[m] is not None]
