"""The least-squares systems a propagation method fits its d×d correction P on (LEP step 4;
arXiv:2412.21140, §3.4): each built once per embedding matrix from the old base and instruct rows, and
read in row blocks. The methods that use them are named in :mod:`lep_plugin.propagation.methods`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from lep_plugin.errors import LEPError
from lep_plugin.math import propagation as prop
from lep_plugin.math.choices import Weighting
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
        dtype: torch.dtype,
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

    def blocks(self, base, instruct, trained, block_rows, dtype) -> Blocks:
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

    def blocks(self, base, instruct, trained, block_rows, dtype) -> Blocks:
        return prop.operator_blocks(self.operator, base, instruct, trained[: self.operator.shape[1]], block_rows, dtype)


SYSTEMS: dict[str, type] = {"overlap": OverlapSystem, "conversion": ConversionSystem}
