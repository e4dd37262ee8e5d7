"""Hutchinson's diagonal: exact on diagonal matrices, unbiased with the 1/√n error it should have,
and Sophia-H reaching the minimizer of a diagonal quadratic in one step when nothing is averaged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

from taskgrad.second_order import HessianOperator, HutchinsonDiagonal, SophiaH, hutchinson_diagonal
from taskgrad.second_order._flat import flatten, unflatten


def test_exact_for_a_diagonal_matrix_with_one_probe():
    d = torch.logspace(-3, 3, 9, dtype=torch.float64) * torch.tensor(
        [1, -1] * 4 + [1], dtype=torch.float64
    )
    est = hutchinson_diagonal(lambda Z: Z * d, 9, n_samples=1, dtype=torch.float64)
    torch.testing.assert_close(est, d, rtol=0, atol=0)


def test_converges_to_the_true_hessian_diagonal(problem):
    params = problem["params"]
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    H = hessian(lambda t: (w * problem["fn"](unflatten(t, params))).sum(), flatten(params))
    leaves = tuple(p.clone().requires_grad_(True) for p in params)
    op = HessianOperator.from_graph(problem["fn"](leaves), leaves, w)
    # per-entry standard deviation of one probe's estimate: sqrt(Σ_{j≠i} H_ij²)
    sd = ((H**2).sum(1) - torch.diagonal(H) ** 2).sqrt()
    errors = {}
    for n in (64, 4096):
        gen = torch.Generator().manual_seed(7)
        est = hutchinson_diagonal(
            op.mm, op.numel, n_samples=n, batch_size=512, dtype=torch.float64, generator=gen
        )
        err = (est - torch.diagonal(H)).abs()
        assert bool((err <= 5 * sd / n**0.5 + 1e-12).all())  # within 5 standard errors, entrywise
        errors[n] = float(err.norm())
    assert errors[4096] < errors[64] / 3  # the error shrinks like 1/√n (8× here)


def test_ema_bias_correction_and_state():
    ema = HutchinsonDiagonal(beta=0.9)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    ema.update(a)
    torch.testing.assert_close(ema.value(), a)  # bias-corrected: the first estimate itself
    v = ema.update(b)
    torch.testing.assert_close(v, (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.81))
    other = HutchinsonDiagonal()
    other.load_state_dict(copy.deepcopy(ema.state_dict()))
    torch.testing.assert_close(other.value(), v)
    with pytest.raises(FloatingPointError):
        ema.update(torch.tensor([float("nan"), 1.0]))


def test_sophia_h_is_newton_on_a_diagonal_quadratic_without_averaging():
    scales = torch.logspace(-2, 2, 5, dtype=torch.float64)
    target = torch.linspace(-1, 1, 5, dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))

    def closure():
        return torch.stack([0.5 * (scales * (theta - target) ** 2).sum()])

    opt = SophiaH([theta], lr=1.0, betas=(0.0, 0.0), gamma=1.0, eps=1e-30, clip=1e6, update_every=1)
    opt.step(closure)
    torch.testing.assert_close(theta.detach(), target, rtol=1e-12, atol=1e-12)


def test_sophia_h_clips_the_update():
    theta = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = SophiaH([theta], lr=0.1, betas=(0.0, 0.0), gamma=1.0, clip=1.0, update_every=1)
    opt.step(lambda: torch.stack([(1e-6 * theta**2).sum() - 5.0 * theta.sum()]))
    # m/h = 5 / 2e-6 per entry: clipped to 1, so each entry moves by exactly lr
    torch.testing.assert_close(theta.detach(), torch.full((3,), 0.1, dtype=torch.float64))
    assert opt.info["clipped_fraction"] == 1.0
