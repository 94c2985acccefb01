"""The propagation step of LEP (step 4): a d×d correction P fitted between the old base and instruct
embeddings and applied to the adapted (new-vocabulary) embeddings, ``new = adapted · P``.

Methods:
- ``swap``: P = I (the adapted rows as they are);
- ``overlap``: A = base rows, B = instruct rows of the tokens whose strings are in both vocabularies;
- ``conversion``: A = T·base, B = T·instruct with the vocabulary operator T (new × old, sparse).

P = argmin ‖A·P − B‖_F. The V×d systems are never materialised in float64: AᵀA and AᵀB (d×d, float64)
are accumulated over row blocks (the least-squares solution only depends on them), then solved with a
Cholesky factorisation of AᵀA (+ a tiny ridge); an ill-conditioned AᵀA falls back to an eigen
decomposition (the minimum-norm solution, as ``lstsq`` gives). Pure functions over tensors, no I/O.

Devices: the normal equations live on the device they are created on (``NormalEquations.zeros(d, device)``)
and each row block is moved there, so the fit's products run on a GPU when the accumulator is there; the
solve runs where AᵀA is; ``adapted · P`` runs on P's device and returns rows on ``adapted``'s device.
One code path: only the CPU's triangle-only product (BLAS ``syrk``, which torch lacks) is CPU-specific.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.linalg.blas import dsyrk
from scipy.linalg.lapack import dpocon

from lep_plugin.math.operator import empty_rows, restrict_to_rows, trained_rows

Method = Literal["swap", "overlap", "conversion"]
METHODS: tuple[Method, ...] = ("swap", "overlap", "conversion")

# Above this condition number of AᵀA a Cholesky solve loses more than ~4 of float64's 16 digits.
MAX_CHOLESKY_CONDITION = 1e12


@dataclass
class NormalEquations:
    """Sufficient statistics of a least-squares fit ``min ‖A·P − B‖``: AᵀA, AᵀB, ‖B‖² and the row count.

    ``gram_lower`` holds AᵀA in its lower triangle only (BLAS ``syrk`` fills one triangle, at half the
    flops of a general product); :meth:`gram` is the full symmetric matrix.
    """

    gram_lower: torch.Tensor
    atb: torch.Tensor
    btb: float
    rows: int

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str = "cpu") -> NormalEquations:
        def zero() -> torch.Tensor:
            return torch.zeros(dim, dim, dtype=torch.float64, device=device)

        return cls(zero(), zero(), 0.0, 0)

    @property
    def device(self) -> torch.device:
        return self.gram_lower.device

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Accumulate one row block (any float dtype, any device; the products are float64 on this
        accumulator's device)."""
        if a.shape != b.shape:
            raise ValueError(f"row blocks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.shape[0] == 0:
            return
        a = a.to(device=self.device, dtype=torch.float64).contiguous()
        b = b.to(device=self.device, dtype=torch.float64)
        if self.device.type == "cpu":
            # Row-major aᵀ is a column-major d×n matrix, and the row-major accumulator seen column-major is
            # its transpose: syrk's "upper" there is our lower triangle, updated in place (beta=1, no copy).
            acc = self.gram_lower.numpy().T
            out = dsyrk(1.0, a.numpy().T, beta=1.0, c=acc, trans=0, lower=0, overwrite_c=1)
            if not np.shares_memory(out, acc):  # not expected: f2py copies only non-contiguous arrays
                acc[...] = out
        else:  # no syrk in torch: the full product (its lower triangle is what gram() reads)
            self.gram_lower.addmm_(a.T, a)
        self.atb.addmm_(a.T, b)
        self.btb += float(torch.linalg.vector_norm(b) ** 2)
        self.rows += a.shape[0]

    def gram(self) -> torch.Tensor:
        """AᵀA as a full symmetric matrix."""
        return torch.tril(self.gram_lower) + torch.tril(self.gram_lower, diagonal=-1).T


def accumulate(
    blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], dim: int, device: torch.device | str = "cpu"
) -> NormalEquations:
    """Normal equations of the rows stacked from ``(A_block, B_block)`` pairs, accumulated on ``device``."""
    eq = NormalEquations.zeros(dim, device)
    for a, b in blocks:
        eq.add(a, b)
    return eq


@dataclass(frozen=True)
class Solution:
    p: torch.Tensor  # d×d float64, on the normal equations' device
    solver: str  # "cholesky" or "eigh"
    condition: float  # condition number of AᵀA: LAPACK's 1-norm estimate (cholesky), exact (eigh); inf when singular
    residual: float  # ‖A·P − B‖ / ‖B‖ of this P


def _solved_residual(eq: NormalEquations, p: torch.Tensor) -> float:
    """The relative residual of a least-squares solution: AᵀA·P = AᵀB there, so ‖A·P − B‖² = ‖B‖² − tr(PᵀAᵀB),
    O(d²) instead of the d³ product of :func:`relative_residual`."""
    return _relative(eq.btb - float((p * eq.atb).sum()), eq.btb)


def _relative(squared_residual: float, btb: float) -> float:
    """‖A·P − B‖ / ‖B‖ from ‖A·P − B‖² (clipped at 0: rounding can make a tiny residual negative)."""
    return math.sqrt(max(squared_residual, 0.0) / btb) if btb > 0 else 0.0


def solve(eq: NormalEquations, ridge: float = 1e-13) -> Solution:
    """P minimising ‖A·P − B‖ from the normal equations.

    Cholesky of AᵀA + ``ridge``·mean(diag)·I first (the ridge only guards against a breakdown from
    rounding; at 1e-13 it moves P far less than the 1e-6 agreement with ``lstsq``), kept when LAPACK's
    condition estimate from the factor (``pocon``, O(d²)) is below :data:`MAX_CHOLESKY_CONDITION`.
    Otherwise: the minimum-norm solution through the eigen decomposition, dropping eigenvalues below
    float64 resolution, which is what ``lstsq`` returns for a rank-deficient A.
    """
    if eq.rows == 0:
        raise ValueError("no rows to fit")
    ata, atb = eq.gram(), eq.atb
    dim = ata.shape[0]
    scale = float(torch.diagonal(ata).mean())
    if scale <= 0:
        raise ValueError("A is all zeros: nothing to fit")
    factor, info = torch.linalg.cholesky_ex(ata + ridge * scale * torch.eye(dim, dtype=ata.dtype, device=ata.device))
    if int(info) == 0:
        one_norm = float(ata.abs().sum(0).max())
        # torch's lower factor L seen column-major is Lᵀ, the upper factor pocon reads by default (LAPACK
        # on the CPU: a d×d copy, O(d²) work)
        rcond, status = dpocon(factor.cpu().numpy().T, one_norm)
        condition = 1.0 / rcond if status == 0 and rcond > 0 else math.inf
        if condition < MAX_CHOLESKY_CONDITION:
            p = torch.cholesky_solve(atb, factor)
            return Solution(p, "cholesky", condition, _solved_residual(eq, p))
    evals, evecs = torch.linalg.eigh(ata)
    keep = evals > evals[-1] * dim * torch.finfo(torch.float64).eps
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    p = evecs @ (inv[:, None] * (evecs.T @ atb))
    condition = float(evals[-1] / evals[0]) if float(evals[0]) > 0 else math.inf
    return Solution(p, "eigh", condition, _solved_residual(eq, p))


def relative_residual(eq: NormalEquations, p: torch.Tensor | None) -> float:
    """‖A·P − B‖ / ‖B‖ from the normal equations (= tr(PᵀAᵀAP) − 2 tr(PᵀAᵀB) + ‖B‖²); P = None is the
    identity (swap), whose residual needs no d³ product."""
    if p is None:
        sq = float(torch.diagonal(eq.gram_lower).sum() - 2.0 * torch.diagonal(eq.atb).sum() + eq.btb)
    else:
        p = p.to(device=eq.device, dtype=torch.float64)
        sq = float((p * (eq.gram() @ p)).sum() - 2.0 * (p * eq.atb).sum() + eq.btb)
    return _relative(sq, eq.btb)


# ----------------------------------------------------------------------------------------- row blocks


def overlap_blocks(
    base: torch.Tensor, instruct: torch.Tensor, old_ids: torch.Tensor, block_rows: int = 16384
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(base rows, instruct rows) of ``old_ids`` in float64 blocks."""
    for start in range(0, old_ids.numel(), block_rows):
        ids = old_ids[start : start + block_rows]
        yield base.index_select(0, ids).to(torch.float64), instruct.index_select(0, ids).to(torch.float64)


def operator_blocks(
    operator: torch.Tensor,
    base: torch.Tensor,
    instruct: torch.Tensor,
    trained: torch.Tensor | None = None,
    block_rows: int = 16384,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(T·base, T·instruct) in float64 row blocks, with the conventions of ``apply_operator``: untrained
    old rows (of the base, so both sides average the same tokens) are left out, and rows with nothing
    to average get the mean trained row.

    Only a block's gathered rows are ever float64: no V×d float64 matrix is built.
    """
    if operator.shape[1] > base.shape[0] or operator.shape[1] > instruct.shape[0]:
        raise ValueError(
            f"operator has {operator.shape[1]} columns but base/instruct have {base.shape[0]}/{instruct.shape[0]} rows"
        )
    old = operator.shape[1]
    base, instruct = base[:old], instruct[:old]
    if trained is None:
        trained = trained_rows(base)
    op = restrict_to_rows(operator, trained)
    missing = empty_rows(op)
    fallback_a = fallback_b = None
    # the fallback means cost a pass over both matrices: only when some row has nothing to average
    if bool(missing.any()):
        fallback_a, fallback_b = _mean_rows(base, trained), _mean_rows(instruct, trained)
    crow, col, val = op.crow_indices(), op.col_indices(), op.values().to(torch.float64)
    for start in range(0, op.shape[0], block_rows):
        stop = min(start + block_rows, op.shape[0])
        lo, hi = int(crow[start]), int(crow[stop])
        cols, vals = col[lo:hi], val[lo:hi]
        counts = crow[start : stop + 1].diff()
        # kept tokens (most rows of an `extend` vocabulary) are one old row with weight 1: a plain gather
        one_to_one = bool((counts == 1).all()) and bool((vals == 1).all())
        row_of = None if one_to_one else torch.repeat_interleave(torch.arange(stop - start, device=counts.device), counts)
        blocks = []
        for old_matrix, fallback in ((base, fallback_a), (instruct, fallback_b)):
            gathered = old_matrix.index_select(0, cols).to(torch.float64)
            if one_to_one:
                rows = gathered
            else:
                gathered.mul_(vals[:, None])
                rows = torch.zeros(stop - start, old_matrix.shape[1], dtype=torch.float64, device=gathered.device)
                rows.index_add_(0, row_of, gathered)
            if fallback is not None:
                rows[missing[start:stop]] = fallback
            blocks.append(rows)
        yield blocks[0], blocks[1]


def _mean_rows(matrix: torch.Tensor, keep: torch.Tensor, block_rows: int = 65536) -> torch.Tensor:
    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    count = int(keep.sum()) if bool(keep.any()) else matrix.shape[0]
    for start in range(0, matrix.shape[0], block_rows):
        rows = matrix[start : start + block_rows].to(torch.float64)
        if bool(keep.any()):
            rows = rows[keep[start : start + block_rows]]
        total += rows.sum(0)
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------- apply


def apply_correction(
    adapted: torch.Tensor,
    p: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
    block_rows: int = 16384,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``adapted · P`` in ``out_dtype`` (default: adapted's), on ``adapted``'s device; the products run on
    P's device (block by block: only one block of rows is ever on a GPU). P = None is the identity (swap).

    Computed per block in float32 (float64 when adapted is float64; see below for 16-bit): the result is
    stored in the checkpoint's dtype, so float64 here would only cost time.
    """
    out_dtype = out_dtype or adapted.dtype
    if p is None:
        return adapted.to(out_dtype).clone()
    half = adapted.dtype in (torch.bfloat16, torch.float16) and out_dtype in (torch.bfloat16, torch.float16)
    compute = torch.float64 if adapted.dtype == torch.float64 else torch.float32
    # 16-bit in and out: adapted·P = adapted + adapted·(P − I), the small second term as a 16-bit product
    # (twice as fast as float32). Its rounding error is ~2⁻⁹·|P − I| of a row, below the final 16-bit
    # rounding of the result whenever |P − I| < 1, as for an instruct model close to its base.
    identity = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    correction = (p.to(torch.float64) - identity).to(adapted.dtype) if half else None
    pc = p.to(compute)
    out = torch.empty(adapted.shape, dtype=out_dtype, device=adapted.device)
    for start in range(0, adapted.shape[0], block_rows):
        stop = min(start + block_rows, adapted.shape[0])
        rows = adapted[start:stop].to(p.device)
        if half:
            out[start:stop] = (rows.float() + (rows @ correction).float()).to(out_dtype)
        else:
            out[start:stop] = (rows.to(compute) @ pc).to(out_dtype)
        if progress:
            progress(stop - start)
    return out


def shared_token_ids(new_vocab: dict[str, int], old_vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(new ids, old ids) of the token strings present in both vocabularies, in new-id order."""
    pairs = sorted((nid, old_vocab[s]) for s, nid in new_vocab.items() if s in old_vocab)
    if not pairs:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    new_ids, old_ids = zip(*pairs)
    return torch.tensor(new_ids, dtype=torch.long), torch.tensor(old_ids, dtype=torch.long)


def dense_reference(a: torch.Tensor, b: torch.Tensor, driver: str = "gelsd") -> torch.Tensor:
    """P by ``torch.linalg.lstsq`` over the full float64 matrices (the authors' way; for tests/benchmarks)."""
    return torch.linalg.lstsq(a.to(torch.float64), b.to(torch.float64), driver=driver).solution
