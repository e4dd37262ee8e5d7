"""Conjugate gradients against torch.linalg.solve, and its stopping reasons."""

from __future__ import annotations

import pytest
import torch

from taskgrad.second_order import conjugate_gradient


def spd(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (
        Q
        @ torch.diag(
            torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
        )
        @ Q.T
    )


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_solves_the_damped_system_and_reports_the_model_value(damping):
    A = spd(12, 1e3)
    b = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = conjugate_gradient(lambda v: A @ v, b, damping=damping, max_iter=100, rtol=1e-12)
    x = torch.linalg.solve(A + damping * torch.eye(12, dtype=torch.float64), b)
    assert res.converged
    torch.testing.assert_close(res.x, x, rtol=1e-9, atol=1e-9)
    # q(x) = ½xᵀ(A+λI)x − bᵀx at the solution equals −½ bᵀx
    assert res.model_value == pytest.approx(float(-0.5 * b @ x), rel=1e-9)


def test_diagonal_preconditioner_exact_for_diagonal_matrix():
    d = torch.logspace(-4, 4, 9, dtype=torch.float64)
    b = torch.ones(9, dtype=torch.float64)
    plain = conjugate_gradient(lambda v: d * v, b, max_iter=100, rtol=1e-10)
    pre = conjugate_gradient(lambda v: d * v, b, max_iter=100, rtol=1e-10, preconditioner=d.clone())
    assert pre.iterations == 1 < plain.iterations
    torch.testing.assert_close(pre.x, b / d)
    with pytest.raises(ValueError, match="positive"):
        conjugate_gradient(lambda v: d * v, b, preconditioner=-d)


def test_negative_curvature_and_nonfinite_stop_with_the_last_finite_iterate():
    A = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    res = conjugate_gradient(lambda v: A @ v, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert res.status == "negative_curvature" and res.iterations == 1
    assert res.curvature == pytest.approx(-1.0) and float(res.x.abs().sum()) == 0.0
    res = conjugate_gradient(lambda v: v * float("nan"), torch.ones(3, dtype=torch.float64))
    assert res.status == "nonfinite" and bool(torch.isfinite(res.x).all())


def test_stall_is_reported():
    """A product that is not linear (rounds to a coarse grid) stops CG from making progress."""
    A = spd(30, 1e8, seed=2)
    b = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = conjugate_gradient(
        lambda v: torch.round(A @ v), b, max_iter=500, rtol=1e-14, stall_iters=5
    )
    assert res.status in ("stalled", "negative_curvature")
    assert res.iterations < 500
