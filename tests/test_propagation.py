"""The propagation math against a dense float64 ``torch.linalg.lstsq`` over the full matrices."""

from __future__ import annotations

import torch

from lep_plugin.math.operator import apply_operator, build_operator, trained_rows
from lep_plugin.math.propagation import (
    NormalEquations,
    accumulate,
    apply_correction,
    dense_reference,
    operator_blocks,
    overlap_blocks,
    relative_residual,
    shared_token_ids,
    solve,
)


def _models(old: int = 700, d: int = 24, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(old, d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64)
    instruct = base @ mix + 0.05 * torch.randn(old, d, generator=g, dtype=torch.float64)
    base[[3, 17]] = 0.0  # never-trained rows (Llama-3 reserved tokens): must not enter the fit
    return base.to(dtype), instruct.to(dtype)


def _pieces(new: int, old: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    pieces = []
    for i in range(new):
        if i < old // 2:
            pieces.append([i])  # shared token: one-hot row
        elif i % 50 == 0:
            pieces.append([])  # nothing to average: gets the mean row
        else:
            n = int(torch.randint(1, 5, (1,), generator=g))
            pieces.append(torch.randint(0, old, (n,), generator=g).tolist())
    return pieces


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - ref) / torch.linalg.norm(ref))


def test_conversion_equals_dense_lstsq():
    base, instruct = _models()
    operator = build_operator(_pieces(900, base.shape[0]), base.shape[0], "mean")
    trained = trained_rows(base)
    a = apply_operator(operator, base, trained)
    b = apply_operator(operator, instruct, trained)
    reference = dense_reference(a, b)
    # small blocks so that the accumulation over many blocks is what is tested
    eq = accumulate(operator_blocks(operator, base, instruct, trained, block_rows=97), base.shape[1])
    assert eq.rows == 900
    sol = solve(eq)
    assert sol.solver == "cholesky"
    assert _rel(sol.p, reference) < 1e-6
    residual = float(torch.linalg.norm(a @ reference - b) / torch.linalg.norm(b))
    assert abs(relative_residual(eq, sol.p) - residual) < 1e-6
    assert abs(sol.residual - residual) < 1e-6
    swap_residual = float(torch.linalg.norm(a - b) / torch.linalg.norm(b))
    assert abs(relative_residual(eq, None) - swap_residual) < 1e-9
    # LAPACK's 1-norm estimate is within a factor d of the exact 2-norm condition number
    exact = float(torch.linalg.cond(a.T @ a))
    assert exact / a.shape[1] <= sol.condition <= exact * a.shape[1]


def test_conversion_blocks_match_apply_operator_with_position_weights_and_bf16():
    base, instruct = _models(dtype=torch.bfloat16)
    operator = build_operator(_pieces(400, base.shape[0], seed=3), base.shape[0], "position")
    trained = trained_rows(base)
    assert torch.equal(trained, trained_rows(base))
    a = apply_operator(operator, base.double(), trained)
    b = apply_operator(operator, instruct.double(), trained)
    blocks = list(operator_blocks(operator, base, instruct, None, block_rows=64))
    assert torch.allclose(torch.cat([x for x, _ in blocks]), a, rtol=0, atol=1e-12)
    assert torch.allclose(torch.cat([y for _, y in blocks]), b, rtol=0, atol=1e-12)
    p = solve(accumulate(iter(blocks), base.shape[1])).p
    assert _rel(p, dense_reference(a, b)) < 1e-6


def test_overlap_equals_dense_lstsq():
    base, instruct = _models(seed=5)
    old_vocab = {f"t{i}": i for i in range(base.shape[0])}
    new_vocab = {f"t{i}": 1000 - i for i in range(0, base.shape[0], 2)} | {"only-new": 5}
    new_ids, old_ids = shared_token_ids(new_vocab, old_vocab)
    assert new_ids.tolist() == sorted(new_ids.tolist()) and 5 not in new_ids.tolist()
    keep = trained_rows(base)[old_ids]
    old_ids = old_ids[keep]
    reference = dense_reference(base[old_ids], instruct[old_ids])
    eq = accumulate(overlap_blocks(base, instruct, old_ids, block_rows=50), base.shape[1])
    assert _rel(solve(eq).p, reference) < 1e-6


def test_ill_conditioned_falls_back_to_minimum_norm_solution():
    g = torch.Generator().manual_seed(7)
    d = 16
    a = torch.randn(300, d - 3, generator=g, dtype=torch.float64) @ torch.randn(
        d - 3, d, generator=g, dtype=torch.float64
    )
    b = torch.randn(300, d, generator=g, dtype=torch.float64)
    eq = NormalEquations.zeros(d)
    eq.add(a, b)
    sol = solve(eq)
    assert sol.solver == "eigh"
    # minimum-norm least squares: the pseudo-inverse solution (gelsd on a rank-deficient A)
    reference = torch.linalg.pinv(a) @ b
    assert _rel(sol.p, reference) < 1e-6
    assert _rel(a @ sol.p, a @ reference) < 1e-6
    assert abs(sol.residual - float(torch.linalg.norm(a @ reference - b) / torch.linalg.norm(b))) < 1e-6


def test_apply_correction_and_swap():
    g = torch.Generator().manual_seed(2)
    adapted = torch.randn(1000, 8, generator=g).to(torch.bfloat16)
    p = torch.randn(8, 8, generator=g, dtype=torch.float64)
    out = apply_correction(adapted, p, block_rows=300)
    assert out.dtype == torch.bfloat16 and out.shape == adapted.shape
    for q in (p, torch.eye(8, dtype=torch.float64) + 0.01 * p):  # any P; P close to I (instruct vs base)
        out = apply_correction(adapted, q, block_rows=300)
        exact = adapted.double() @ q
        # rounding of the 16-bit product of adapted·(P − I), plus the final bf16 rounding of the result
        bound = 2**-8 * (adapted.double().abs() @ (q - torch.eye(8, dtype=torch.float64)).abs()) + 2**-8 * exact.abs()
        assert ((out.double() - exact).abs() <= bound + 1e-12).all()
    assert torch.equal(apply_correction(adapted, None), adapted)
    as64 = apply_correction(adapted.double(), p)
    assert torch.allclose(as64, adapted.double() @ p, rtol=1e-12, atol=1e-12)
