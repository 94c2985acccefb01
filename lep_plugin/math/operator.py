"""The vocabulary operator T (new vocab × old vocab) of LEP steps 2 and 4.

Row i of T holds the averaging weights that express new token i through old tokens: a token present
in both vocabularies is a one-hot row, a new token is the mean (or position-weighted mean) of the old
pieces its string splits into, and an empty row (a padding row, or a token whose pieces were never
trained) falls back to the mean of all trained old rows. ``new = T · old`` initialises embeddings (step 2)
and ``A = T · base, B = T · instruct`` is the "vocabulary conversion" fit of propagation (step 4).

Pure functions over tensors: no tokenizers, no files. Results are on the device of the matrix they are
computed from (T is built on the CPU and moved there), so the same code runs on CPU and GPU weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from lep_plugin.math.choices import Weighting


def build_operator(pieces: Sequence[Sequence[int]], old_vocab_size: int, weighting: Weighting = "mean") -> torch.Tensor:
    """Sparse CSR float64 matrix T of shape (len(pieces), old_vocab_size).

    ``pieces[i]`` are the old ids that new token ``i`` splits into (empty: no decomposition).
    ``weighting="position"`` weighs piece j of n by (j+1) / sum(1..n): later pieces, which carry the
    end of the token's string, count more (the first piece is often a shared prefix).
    """
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    cols = np.fromiter((i for p in pieces for i in p), dtype=np.int64, count=int(lengths.sum()))
    if cols.size and (cols.min() < 0 or cols.max() >= old_vocab_size):
        raise ValueError(f"piece ids must lie in [0, {old_vocab_size})")
    crow = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=crow[1:])
    row_len = np.repeat(lengths, lengths).astype(np.float64)
    if weighting == "mean":
        values = 1.0 / row_len
    elif weighting == "position":
        position = np.arange(cols.size, dtype=np.float64) - np.repeat(crow[:-1], lengths) + 1.0
        values = position / (row_len * (row_len + 1.0) / 2.0)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return csr_matrix(
        torch.from_numpy(crow), torch.from_numpy(cols), torch.from_numpy(values), (len(pieces), old_vocab_size)
    )


def csr_matrix(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor built from indices we constructed ourselves (so invariant checks are skipped), on
    their device (not torch's default device)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False, device=val.device)


def trained_rows(matrix: torch.Tensor, rel_tol: float = 1e-3) -> torch.Tensor:
    """Bool mask of rows that were trained: norm above ``rel_tol`` × the median row norm.

    Rows never touched by training (Llama-3 base's reserved special tokens, padding rows) have zero or
    near-zero norm; averaging them in would shrink new rows towards zero.
    """
    # block by block: no full float32 copy of a 16-bit 128k×4096 matrix
    norms = torch.cat(
        [torch.linalg.vector_norm(matrix[s : s + 65536].float(), dim=1) for s in range(0, matrix.shape[0], 65536)]
    )
    positive = norms[norms > 0]
    if positive.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    return norms > rel_tol * positive.median()


def _row_of_values(crow: torch.Tensor) -> torch.Tensor:
    """The row index of each stored value of a CSR matrix (on the matrix's device)."""
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())


def restrict_to_rows(operator: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """T with the columns of ``~keep`` dropped and each row renormalised to sum 1 (on ``keep``'s device).

    Rows left empty become all-zero; :func:`apply_operator` fills those with the fallback row.
    """
    operator = operator.to_sparse_csr().to(keep.device)
    crow, col, val = operator.crow_indices(), operator.col_indices(), operator.values()
    val = val * keep.to(val.dtype)[col]
    row_of = _row_of_values(crow)
    sums = torch.zeros(operator.shape[0], dtype=val.dtype, device=val.device).index_add_(0, row_of, val)
    safe = torch.where(sums > 0, sums, torch.ones_like(sums))
    return csr_matrix(crow, col, val / safe[row_of], tuple(operator.shape))


def empty_rows(operator: torch.Tensor) -> torch.Tensor:
    """Bool mask of rows whose weights sum to zero (nothing to average)."""
    operator = operator.to_sparse_csr()
    crow, val = operator.crow_indices(), operator.values()
    sums = torch.zeros(operator.shape[0], dtype=val.dtype, device=val.device).index_add_(
        0, _row_of_values(crow), val.abs()
    )
    return sums == 0


def apply_operator(
    operator: torch.Tensor,
    old: torch.Tensor,
    trained: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T · old`` in ``old``'s dtype and on ``old``'s device, computed in float32 (float64 if ``old`` is
    float64), wherever T and ``trained`` were made.

    Untrained old rows (``trained`` False; default: :func:`trained_rows`) are left out of every average,
    and rows with nothing left get the mean of the trained old rows, so no new row is ever random or zero.
    On the ``meta`` device (a rank that holds no weights, e.g. FSDP's memory-efficient loading) only the
    result's shape and dtype exist: an empty meta matrix.
    """
    if operator.shape[1] != old.shape[0]:
        raise ValueError(f"operator has {operator.shape[1]} columns but the matrix has {old.shape[0]} rows")
    if old.is_meta:
        return torch.empty((operator.shape[0], old.shape[1]), dtype=old.dtype, device=old.device)
    trained = trained_rows(old) if trained is None else trained.to(old.device)
    compute = torch.float64 if old.dtype == torch.float64 else torch.float32
    op = restrict_to_rows(operator, trained)
    missing = empty_rows(op)
    source = old.to(compute)
    weights = (
        trained.to(compute) if bool(trained.any()) else torch.ones(source.shape[0], dtype=compute, device=old.device)
    )
    fallback = (weights @ source) / weights.sum()  # mean of trained rows without copying them
    # T · old is a weighted-sum embedding bag over T's CSR rows: one pass of a fast CPU kernel
    rows = torch.nn.functional.embedding_bag(
        op.col_indices(), source, op.crow_indices()[:-1], mode="sum", per_sample_weights=op.values().to(compute)
    )
    rows[missing] = fallback
    return rows.to(old.dtype)
