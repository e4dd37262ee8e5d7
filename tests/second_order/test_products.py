"""Hessian- and Gauss-Newton-vector products against independent computations:
an explicit Hessian (torch.autograd.functional.hessian), central finite differences of the
gradient, and Jᵀ H J assembled from an explicit Jacobian and output Hessian."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

from taskgrad.second_order import (
    GaussNewtonOperator,
    HessianOperator,
    gnvp,
    gnvp_from_graph,
    hvp,
    hvp_from_graph,
)
from taskgrad.second_order._flat import flatten, unflatten

W = torch.tensor([0.3, 1.7], dtype=torch.float64)


def flat_fn(problem, weights=W):
    """f(θ) = Σ wᵢ Lᵢ(θ) as a function of the flat parameter vector."""
    params = problem["params"]
    return lambda t: (weights * problem["fn"](unflatten(t, params))).sum()


def explicit_hessian(problem, weights=W) -> torch.Tensor:
    theta = flatten(problem["params"])
    return hessian(flat_fn(problem, weights), theta)


def explicit_gauss_newton(problem, weights=W) -> torch.Tensor:
    """Jᵀ H_z J with J = ∂z/∂θ (z = both heads' outputs, flattened) and H_z = ∇²_z Σ wᵢ ℓᵢ."""
    params = problem["params"]
    theta = flatten(params)
    z0 = problem["model_fn"](params)
    shapes = [z.shape for z in z0]

    def z_of_theta(t):
        return torch.cat([z.reshape(-1) for z in problem["model_fn"](unflatten(t, params))])

    def ell_of_z(zf):
        parts, start = [], 0
        for s in shapes:
            n = int(torch.tensor(s).prod())
            parts.append(zf[start : start + n].reshape(s))
            start += n
        return (weights * problem["loss_fn"](tuple(parts))).sum()

    J = jacobian(z_of_theta, theta)
    Hz = hessian(ell_of_z, z_of_theta(theta))
    return J.T @ Hz @ J


def random_vectors(params, m=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    lead = () if m is None else (m,)
    return tuple(torch.randn(*lead, *p.shape, generator=g, dtype=p.dtype) for p in params)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_hvp_matches_explicit_hessian_batched(problem, mode):
    H = explicit_hessian(problem)
    V = random_vectors(problem["params"], m=4)
    out = hvp(problem["fn"], problem["params"], V, W, batched=True, mode=mode)
    got = torch.cat([o.reshape(4, -1) for o in out], dim=1)
    want = torch.cat([v.reshape(4, -1) for v in V], dim=1) @ H.T
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_hvp_from_graph_matches_finite_differences(problem):
    params = tuple(p.clone().requires_grad_(True) for p in problem["params"])
    v = random_vectors(params)
    out = flatten(hvp_from_graph(problem["fn"](params), params, v, W))
    theta = flatten(problem["params"])
    vf = flatten(v)
    f = flat_fn(problem)
    eps = 1e-5

    def grad_at(t):
        t = t.clone().requires_grad_(True)
        return torch.autograd.grad(f(t), t)[0]

    fd = (grad_at(theta + eps * vf) - grad_at(theta - eps * vf)) / (2 * eps)
    torch.testing.assert_close(out, fd, rtol=1e-6, atol=1e-7)


def test_forward_and_reverse_unbatched_agree_and_are_linear(problem):
    params = problem["params"]
    u, v = random_vectors(params, seed=2), random_vectors(params, seed=3)
    hu = flatten(hvp(problem["fn"], params, u, W, mode="forward"))
    hv = flatten(hvp(problem["fn"], params, v, W, mode="reverse"))
    combo = tuple(2 * a - 3 * b for a, b in zip(u, v, strict=True))
    hc = flatten(hvp(problem["fn"], params, combo, W, mode="forward"))
    torch.testing.assert_close(hc, 2 * hu - 3 * hv, rtol=1e-10, atol=1e-10)
    # symmetry: uᵀHv = vᵀHu
    torch.testing.assert_close(flatten(u) @ hv, flatten(v) @ hu, rtol=1e-10, atol=1e-12)


def test_weights_enter_linearly(problem):
    """H(w) = Σ wᵢ Hᵢ: the product for w equals the w-combination of the per-task products."""
    params = problem["params"]
    v = random_vectors(params)
    e0, e1 = (
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    h0 = flatten(hvp(problem["fn"], params, v, e0))
    h1 = flatten(hvp(problem["fn"], params, v, e1))
    hw = flatten(hvp(problem["fn"], params, v, W))
    torch.testing.assert_close(hw, W[0] * h0 + W[1] * h1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_gnvp_equals_explicit_jt_h_j(problem, mode):
    G = explicit_gauss_newton(problem)
    V = random_vectors(problem["params"], m=3)
    out = gnvp(
        problem["model_fn"], problem["loss_fn"], problem["params"], V, W, batched=True, mode=mode
    )
    got = torch.cat([o.reshape(3, -1) for o in out], dim=1)
    want = torch.cat([v.reshape(3, -1) for v in V], dim=1) @ G.T
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # PSD: losses are convex in the outputs, so vᵀGv ≥ 0
    assert bool((torch.linalg.eigvalsh(0.5 * (G + G.T)) > -1e-10).all())


def test_gnvp_from_graph_and_operator_with_jvp(problem):
    G = explicit_gauss_newton(problem)
    params = tuple(p.clone().requires_grad_(True) for p in problem["params"])
    z = problem["model_fn"](params)
    L = problem["loss_fn"](z)
    v = random_vectors(params, seed=5)
    got = flatten(gnvp_from_graph(L, list(z), params, v, W))
    torch.testing.assert_close(got, G @ flatten(v), rtol=1e-10, atol=1e-10)

    def jvp(vs):
        return torch.func.jvp(problem["model_fn"], (problem["params"],), (vs,))[1]

    op = GaussNewtonOperator.from_graph(L, list(z), params, W, jvp=jvp)
    torch.testing.assert_close(op.mv(flatten(v)), G @ flatten(v), rtol=1e-10, atol=1e-10)
    # the gradient it carries is the full gradient of Σ wᵢLᵢ
    g = torch.autograd.grad((W * problem["fn"](params)).sum(), params)
    torch.testing.assert_close(op.grad, flatten(g), rtol=1e-12, atol=1e-12)


def test_gauss_newton_equals_hessian_for_linear_least_squares():
    """For z = Xθ and ℓ = ½‖z − y‖², G = H = XᵀX: an independent closed form."""
    torch.manual_seed(0)
    X = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randn(9, dtype=torch.float64)
    theta = torch.randn(4, dtype=torch.float64)
    v = torch.randn(5, 4, dtype=torch.float64)
    out = gnvp(
        lambda p: X @ p[0], lambda z: 0.5 * ((z - y) ** 2).sum(), (theta,), (v,), batched=True
    )[0]
    torch.testing.assert_close(out, v @ (X.T @ X), rtol=1e-12, atol=1e-12)
    hv = hvp(lambda p: 0.5 * ((X @ p[0] - y) ** 2).sum(), (theta,), (v,), batched=True)[0]
    torch.testing.assert_close(hv, out, rtol=1e-12, atol=1e-12)


def test_operator_mm_equals_rows_of_mv(problem):
    params = tuple(p.clone().requires_grad_(True) for p in problem["params"])
    op = HessianOperator.from_graph(problem["fn"](params), params, W)
    V = torch.randn(3, op.numel, dtype=torch.float64)
    torch.testing.assert_close(op.mm(V), torch.stack([op.mv(v) for v in V]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        op.mv(torch.zeros(op.numel + 1, dtype=torch.float64))


def test_unused_parameter_has_zero_rows():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)  # unused
    L = torch.stack([(a**3).sum(), (a**2).sum()])
    out = hvp_from_graph(
        L, (a, b), (torch.ones(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    )
    torch.testing.assert_close(out[0], 6 * a.detach() + 2)
    assert float(out[1]) == 0.0


def test_bad_vectors_raise_clearly(problem):
    with pytest.raises(ValueError, match="one tensor per parameter"):
        hvp(problem["fn"], problem["params"], problem["params"][:2])
    with pytest.raises(ValueError, match="shape"):
        hvp(problem["fn"], problem["params"], random_vectors(problem["params"]), batched=True)
    with pytest.raises(ValueError, match="weights has shape"):
        hvp(
            problem["fn"],
            problem["params"],
            random_vectors(problem["params"]),
            torch.ones(3, dtype=torch.float64),
        )
