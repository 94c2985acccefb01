"""The propagation step of LEP (step 4): a d×d correction P fitted between the old base and instruct
embeddings and applied to the adapted (new-vocabulary) embeddings, ``new = adapted · P``.

Methods:
- ``swap``: P = I (the adapted rows as they are);
- ``overlap``: A = base rows, B = instruct rows of the tokens whose strings are in both vocabularies;
- ``conversion``: A = T·base, B = T·instruct with the vocabulary operator T (new × old, sparse).

P = argmin ‖A·P − B‖_F, fitted as P = I + Q with Q = argmin ‖A·Q − Δ‖, Δ = B − A (what instruction tuning
changed): the V×d systems are never materialised; AᵀA and AᵀΔ (d×d) are accumulated over row blocks (the
least-squares solution only depends on them), then solved in float64 with a Cholesky factorisation of AᵀA
(+ a tiny ridge); an ill-conditioned AᵀA falls back to an eigen decomposition (the minimum-norm solution,
as ``lstsq`` gives). Pure functions over tensors, no I/O.

Precision (``Precision``): ``exact`` accumulates AᵀA and AᵀΔ in float64; ``mixed`` in float32 (products
at twice float64's throughput, half the memory traffic). Why that is enough for a 16-bit checkpoint: Q is
small (instruct ≈ base), the errors of AᵀΔ scale with |Δ| and those of AᵀA reach the output as
cond(AᵀA)·u₃₂·|Q|, which :func:`mixed_error_estimate` bounds from the solve's condition estimate (the
caller refits exactly when it is too large). bfloat16 products were measured and rejected: rounding Δ, the
per-block products or Q to bfloat16 changed 4–25 % of the stored bf16 elements even for cond(A) = 10.

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
from scipy.linalg.blas import dsyrk, ssyrk
from scipy.linalg.lapack import dpocon

from lep_plugin.math.operator import empty_rows, restrict_to_rows, trained_rows

Method = Literal["swap", "overlap", "conversion"]
METHODS: tuple[Method, ...] = ("swap", "overlap", "conversion")

Precision = Literal["exact", "mixed"]

# Above this condition number of AᵀA a Cholesky solve loses more than ~4 of float64's 16 digits.
MAX_CHOLESKY_CONDITION = 1e12
# float32's unit roundoff: the relative error of each entry of a float32 AᵀA
FLOAT32_ROUNDOFF = 2.0**-24
# A mixed fit is kept when its estimated relative error in the output is at most this many units in the
# last place of the 16-bit output (finfo.eps: bfloat16 2⁻⁷, float16 2⁻¹⁰). The estimate is a bound, so every
# stored element stays within 1 ulp of the exact fit's; most are identical (99.6 % measured on an AVX2 CPU,
# 98.8 % on an AVX-512 one: the share depends on the BLAS kernel, tests/test_precision.py).
MAX_MIXED_ERROR_ULPS = 1.0


@dataclass
class NormalEquations:
    """Sufficient statistics of ``min ‖A·P − B‖`` as P = I + Q, Q = argmin ‖A·Q − Δ‖ with Δ = B − A:
    AᵀA, AᵀΔ, ‖Δ‖², ‖B‖² and the row count.

    Why Δ and not B: instruct rows are base rows plus a small change, so Q is small and the rounding
    errors of AᵀΔ scale with |Δ| instead of with the embeddings (what makes the mixed fit exact enough).
    ``gram_lower`` holds AᵀA in its lower triangle only (BLAS ``syrk`` fills one triangle, at half the
    flops of a general product); :meth:`gram` is the full symmetric matrix. The accumulators' dtype is
    the precision: float64 (exact) or float32 (mixed); each block is converted to it, products included.
    """

    gram_lower: torch.Tensor
    atd: torch.Tensor
    dtd: float
    btb: float
    rows: int

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str = "cpu", precision: Precision = "exact") -> NormalEquations:
        def zero() -> torch.Tensor:
            return torch.zeros(dim, dim, dtype=accumulator_dtype(precision), device=device)

        return cls(zero(), zero(), 0.0, 0.0, 0)

    @property
    def device(self) -> torch.device:
        return self.gram_lower.device

    @property
    def precision(self) -> Precision:
        return "exact" if self.gram_lower.dtype == torch.float64 else "mixed"

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Accumulate one row block (any float dtype, any device; the products run on this accumulator's
        device, in its precision)."""
        if a.shape != b.shape:
            raise ValueError(f"row blocks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.shape[0] == 0:
            return
        acc = self.gram_lower.dtype
        a = a.to(device=self.device, dtype=acc).contiguous()
        b = b.to(device=self.device, dtype=acc)
        delta = b - a
        self._add_gram(a)
        self.atd.addmm_(a.T, delta)
        self.dtd += float(torch.linalg.vector_norm(delta, dtype=torch.float64) ** 2)
        self.btb += float(torch.linalg.vector_norm(b, dtype=torch.float64) ** 2)
        self.rows += a.shape[0]

    def _add_gram(self, a: torch.Tensor) -> None:
        if self.device.type == "cpu":
            # Row-major aᵀ is a column-major d×n matrix, and the row-major accumulator seen column-major is
            # its transpose: syrk's "upper" there is our lower triangle, updated in place (beta=1, no copy).
            syrk = dsyrk if a.dtype == torch.float64 else ssyrk
            acc = self.gram_lower.numpy().T
            out = syrk(1.0, a.numpy().T, beta=1.0, c=acc, trans=0, lower=0, overwrite_c=1)
            if not np.shares_memory(out, acc):  # not expected: f2py copies only non-contiguous arrays
                acc[...] = out
        else:  # no syrk in torch: the full product (its lower triangle is what gram() reads)
            self.gram_lower.addmm_(a.T, a)

    def gram(self) -> torch.Tensor:
        """AᵀA as a full symmetric float64 matrix."""
        lower = torch.tril(self.gram_lower.to(torch.float64))
        return lower + torch.tril(lower, diagonal=-1).T


def accumulator_dtype(precision: Precision) -> torch.dtype:
    """The dtype a fit of ``precision`` accumulates (and gathers its row blocks) in."""
    return torch.float64 if precision == "exact" else torch.float32


def accumulate(
    blocks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    dim: int,
    device: torch.device | str = "cpu",
    precision: Precision = "exact",
) -> NormalEquations:
    """Normal equations of the rows stacked from ``(A_block, B_block)`` pairs, accumulated on ``device``."""
    eq = NormalEquations.zeros(dim, device, precision)
    for a, b in blocks:
        eq.add(a, b)
    return eq


@dataclass(frozen=True)
class Solution:
    p: torch.Tensor  # d×d float64, on the normal equations' device
    solver: str  # "cholesky" or "eigh"
    condition: float  # condition number of AᵀA: LAPACK's 1-norm estimate (cholesky), exact (eigh); inf when singular
    residual: float  # ‖A·P − B‖ / ‖B‖ of this P


def _solved_residual(eq: NormalEquations, q: torch.Tensor) -> float:
    """The relative residual of a least-squares solution: AᵀA·Q = AᵀΔ there, so ‖A·Q − Δ‖² = ‖Δ‖² − tr(QᵀAᵀΔ),
    O(d²) instead of the d³ product of :func:`relative_residual`."""
    return _relative(eq.dtd - float((q * eq.atd.to(q.dtype)).sum()), eq.btb)


def _relative(squared_residual: float, btb: float) -> float:
    """‖A·P − B‖ / ‖B‖ from ‖A·P − B‖² (clipped at 0: rounding can make a tiny residual negative)."""
    return math.sqrt(max(squared_residual, 0.0) / btb) if btb > 0 else 0.0


def solve(eq: NormalEquations, ridge: float = 1e-13) -> Solution:
    """P minimising ‖A·P − B‖ from the normal equations (solved in float64 whatever they were accumulated in).

    Cholesky of AᵀA + ``ridge``·mean(diag)·I first (the ridge only guards against a breakdown from
    rounding; at 1e-13 it moves P far less than the 1e-6 agreement with ``lstsq``), kept when LAPACK's
    condition estimate from the factor (``pocon``, O(d²)) is below :data:`MAX_CHOLESKY_CONDITION`.
    Otherwise: the minimum-norm solution through the eigen decomposition, dropping eigenvalues below
    float64 resolution, which is what ``lstsq`` returns for a rank-deficient A.
    """
    if eq.rows == 0:
        raise ValueError("no rows to fit")
    ata, atd = eq.gram(), eq.atd.to(torch.float64)
    dim = ata.shape[0]
    identity = torch.eye(dim, dtype=ata.dtype, device=ata.device)
    scale = float(torch.diagonal(ata).mean())
    if scale <= 0:
        raise ValueError("A is all zeros: nothing to fit")
    factor, info = torch.linalg.cholesky_ex(ata + ridge * scale * identity)
    if int(info) == 0:
        one_norm = float(ata.abs().sum(0).max())
        # torch's lower factor L seen column-major is Lᵀ, the upper factor pocon reads by default (LAPACK
        # on the CPU: a d×d copy, O(d²) work)
        rcond, status = dpocon(factor.cpu().numpy().T, one_norm)
        condition = 1.0 / rcond if status == 0 and rcond > 0 else math.inf
        if condition < MAX_CHOLESKY_CONDITION:
            q = torch.cholesky_solve(atd, factor)
            return Solution(identity + q, "cholesky", condition, _solved_residual(eq, q))
    evals, evecs = torch.linalg.eigh(ata)
    keep = evals > evals[-1] * dim * torch.finfo(torch.float64).eps
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    q = evecs @ (inv[:, None] * (evecs.T @ atd))
    # lstsq's minimum-norm P = (AᵀA)⁺AᵀB = (AᵀA)⁺AᵀA + (AᵀA)⁺AᵀΔ: the projection onto A's row space, not I
    kept = evecs[:, keep]
    condition = float(evals[-1] / evals[0]) if float(evals[0]) > 0 else math.inf
    return Solution(kept @ kept.T + q, "eigh", condition, _solved_residual(eq, q))


def relative_residual(eq: NormalEquations, p: torch.Tensor | None) -> float:
    """‖A·P − B‖ / ‖B‖ from the normal equations: with Q = P − I, ‖A·Q − Δ‖² = tr(QᵀAᵀAQ) − 2 tr(QᵀAᵀΔ) + ‖Δ‖²;
    P = None is the identity (swap), whose residual is ‖Δ‖ with no d³ product."""
    if p is None:
        return _relative(eq.dtd, eq.btb)
    q = p.to(device=eq.device, dtype=torch.float64) - torch.eye(p.shape[0], dtype=torch.float64, device=eq.device)
    sq = float((q * (eq.gram() @ q)).sum() - 2.0 * (q * eq.atd.to(torch.float64)).sum() + eq.dtd)
    return _relative(sq, eq.btb)


def mixed_error_estimate(solution: Solution) -> float:
    """Estimated relative error that a float32 AᵀA puts into adapted·P: the perturbation of AᵀA (float32
    rounding) reaches Q multiplied by the condition number of AᵀA, and the output through |Q| relative to |P|.
    Compare with the output dtype's unit roundoff (see :func:`mixed_fit_trusted`)."""
    dim = solution.p.shape[0]
    q = solution.p - torch.eye(dim, dtype=solution.p.dtype, device=solution.p.device)
    q_rel = float(torch.linalg.matrix_norm(q) / torch.linalg.matrix_norm(solution.p))
    return solution.condition * FLOAT32_ROUNDOFF * q_rel


def mixed_fit_trusted(solution: Solution, out_dtype: torch.dtype) -> bool:
    """Whether a mixed fit's P is as good as the exact one once the output is rounded to ``out_dtype``
    (a rank-deficient A, solved through ``eigh``, is never trusted: its condition is float32 noise)."""
    if solution.solver != "cholesky" or not math.isfinite(solution.condition):
        return False
    return mixed_error_estimate(solution) <= MAX_MIXED_ERROR_ULPS * torch.finfo(out_dtype).eps


# ----------------------------------------------------------------------------------------- row blocks


def overlap_blocks(
    base: torch.Tensor,
    instruct: torch.Tensor,
    old_ids: torch.Tensor,
    block_rows: int = 16384,
    dtype: torch.dtype = torch.float64,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(base rows, instruct rows) of ``old_ids`` in ``dtype`` blocks."""
    for start in range(0, old_ids.numel(), block_rows):
        ids = old_ids[start : start + block_rows]
        yield base.index_select(0, ids).to(dtype), instruct.index_select(0, ids).to(dtype)


def operator_blocks(
    operator: torch.Tensor,
    base: torch.Tensor,
    instruct: torch.Tensor,
    trained: torch.Tensor | None = None,
    block_rows: int = 16384,
    dtype: torch.dtype = torch.float64,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(T·base, T·instruct) in ``dtype`` row blocks (float64: exact fit; float32: mixed), with the
    conventions of ``apply_operator``: untrained old rows (of the base, so both sides average the same
    tokens) are left out, and rows with nothing to average get the mean trained row.

    Only a block's gathered rows are ever in ``dtype``: no V×d matrix of it is built.
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
    crow, col, val = op.crow_indices(), op.col_indices(), op.values().to(dtype)
    for start in range(0, op.shape[0], block_rows):
        stop = min(start + block_rows, op.shape[0])
        lo, hi = int(crow[start]), int(crow[stop])
        cols, vals = col[lo:hi], val[lo:hi]
        counts = crow[start : stop + 1].diff()
        # kept tokens (most rows of an `extend` vocabulary) are one old row with weight 1: a plain gather
        one_to_one = bool((counts == 1).all()) and bool((vals == 1).all())
        row_of = (
            None if one_to_one else torch.repeat_interleave(torch.arange(stop - start, device=counts.device), counts)
        )
        blocks = []
        for old_matrix, fallback in ((base, fallback_a), (instruct, fallback_b)):
            gathered = old_matrix.index_select(0, cols).to(dtype)
            if one_to_one:
                rows = gathered
            else:
                gathered.mul_(vals[:, None])
                rows = torch.zeros(stop - start, old_matrix.shape[1], dtype=dtype, device=gathered.device)
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

    Computed as adapted + adapted·(P − I) in float32 (float64 when adapted is float64): the small second
    term carries all the rounding, ~|P − I| times smaller than the result's own (a bfloat16 product of it
    changed 4–25 % of the stored bf16 elements: measured, see the module docstring).
    """
    out_dtype = out_dtype or adapted.dtype
    if p is None:
        return adapted.to(out_dtype).clone()
    compute = torch.float64 if adapted.dtype == torch.float64 else torch.float32
    identity = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    correction = (p.to(torch.float64) - identity).to(compute)
    out = torch.empty(adapted.shape, dtype=out_dtype, device=adapted.device)
    for start in range(0, adapted.shape[0], block_rows):
        stop = min(start + block_rows, adapted.shape[0])
        rows = adapted[start:stop].to(device=p.device, dtype=compute)
        out[start:stop] = torch.addmm(rows, rows, correction).to(out_dtype)  # rows + rows·(P − I), one kernel
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
