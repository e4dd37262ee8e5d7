"""Exactness of the batched Gram solvers: KKT conditions and agreement with independent solvers."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from taskgrad.solvers import (
    _compiled,
    min_norm_simplex,
    nnls,
    primary_aux,
    primary_aux_frank_wolfe,
    primary_aux_kkt_residual,
)
from tests.solvers.gram_cases import KINDS, gram, jacobian, kkt_residual_reference


def kkt_primary_aux(w: torch.Tensor, G: torch.Tensor, n: int = 1, eps: float = 1e-12) -> float:
    """Independent KKT residual of the (mixed) primary/aux problem, written from the math.

    n = 1: w₀ = 1, λ ≥ 0, ⟨u, gᵢ⟩ ≥ 0 and λᵢ⟨u, gᵢ⟩ = 0 (stationarity holds by construction
    u = g0 + Σλᵢgᵢ). n > 1: α in the simplex and ⟨u, gⱼ⟩ ≥ ‖u‖² with equality where αⱼ > 0.
    Inner products with gᵢ are normalized by σᵢ·T with T = ‖w‖₁·maxⱼ σⱼ, the data's scale.
    """
    G = G.double()
    w = w.double()
    assert bool((w >= 0).all()), "negative weight"
    if n == 1:
        assert abs(float(w[0]) - 1.0) < 1e-12
    else:
        assert abs(float(w[:n].sum()) - 1.0) < 1e-9
    sig = torch.diagonal(G).clamp_min(0).sqrt()
    S = float(w.abs().sum() * sig.max()) or 1.0
    Gu = G @ w
    live = torch.diagonal(G) > eps * torch.diagonal(G).max()
    res = 0.0
    for i in range(len(w)):
        if not live[i]:
            continue
        if i < n:
            if n == 1:
                continue
            slack = (Gu[i] - w @ Gu) / (sig[i] * S)
            res = max(res, abs(min(float(w[i]), float(slack))))
        else:
            res = max(res, abs(min(float(w[i] * sig[i] / S), float(Gu[i] / (sig[i] * S)))))
    return res


def cvxpy_direction(J: np.ndarray, n: int = 1, margin: float = 0.0) -> np.ndarray:
    """u from cvxpy, independently of taskgrad (the primal form for n = 1, the dual otherwise)."""
    k, P = J.shape
    scale = np.abs(J).max() or 1.0
    Js = J / scale
    if n == 1:
        u = cp.Variable(P)
        cons = [Js[1:] @ u >= margin / scale * cp.norm(u)] if margin > 0 else [Js[1:] @ u >= 0]
        cp.Problem(cp.Minimize(cp.sum_squares(u - Js[0])), cons).solve(solver=cp.CLARABEL)
        return u.value * scale
    w = cp.Variable(k)
    cons = [w >= 0, cp.sum(w[:n]) == 1]
    cp.Problem(cp.Minimize(cp.sum_squares(Js.T @ w)), cons).solve(solver=cp.CLARABEL)
    return Js.T @ w.value * scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [2, 3, 8, 40])
def test_primary_aux_kkt_and_agrees_with_cvxpy(kind: str, k: int) -> None:
    J = jacobian(kind, k, P=2 * k + 5, seed=k)
    G = gram(J)
    w, info = primary_aux(G, return_info=True)
    assert bool(info.converged)
    assert kkt_primary_aux(w, G) <= 1e-6
    assert float(info.kkt_residual) <= 1e-6
    u = J.T @ w
    u_ref = torch.from_numpy(cvxpy_direction(J.numpy()))
    ref_scale = float(J.norm(dim=1).max())
    assert float((u - u_ref).norm()) <= 1e-4 * ref_scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,n", [(3, 2), (8, 3), (12, 12), (40, 5)])
def test_mixed_and_mgda_agree_with_cvxpy(kind: str, k: int, n: int) -> None:
    J = jacobian(kind, k, P=2 * k + 5, seed=7 * k + n)
    G = gram(J)
    w, info = primary_aux(G, n_primary=n, return_info=True)
    assert bool(info.converged)
    assert kkt_primary_aux(w, G, n=n) <= 1e-6
    u = J.T @ w
    u_ref = torch.from_numpy(cvxpy_direction(J.numpy(), n=n))
    assert float((u - u_ref).norm()) <= 1e-4 * float(J.norm(dim=1).max())


def test_min_norm_simplex_is_mgda() -> None:
    J = jacobian("random", 6, 9, seed=3)
    G = gram(J)
    a = min_norm_simplex(G)
    assert torch.allclose(a, primary_aux(G, n_primary=6), atol=0, rtol=0)
    d = J.T @ a
    # ⟨d, g_j⟩ ≥ ‖d‖² for every task, equality on the support
    inner = J @ d
    assert bool((inner >= d @ d - 1e-10 * float(G.diagonal().max())).all())


@pytest.mark.parametrize("k", [128, 512])
@pytest.mark.slow
def test_large_k_kkt(k: int) -> None:
    kinds = ["conflicting", "rank_deficient", "duplicated", "zero"] + (
        ["rank_half"] if k <= 128 else []
    )
    for kind in kinds:
        J = jacobian(kind, k, P=k + 50, seed=k)
        G = gram(J)
        w, info = primary_aux(G, return_info=True)
        assert bool(info.converged), kind
        assert kkt_primary_aux(w, G) <= 1e-6, kind
        w32, info32 = primary_aux(G.float(), compute_dtype=torch.float32, return_info=True)
        assert bool(info32.converged), kind
        assert kkt_primary_aux(w32, G) <= 1e-4, kind
        a, info_m = min_norm_simplex(G, return_info=True)
        assert bool(info_m.converged), kind
        assert kkt_primary_aux(a, G, n=k) <= 1e-6, kind


@pytest.mark.slow
def test_k512_agrees_with_cvxpy() -> None:
    J = jacobian("conflicting", 512, P=600, seed=1)
    w = primary_aux(gram(J))
    u_ref = torch.from_numpy(cvxpy_direction(J.numpy()))
    assert float((J.T @ w - u_ref).norm()) <= 1e-4 * float(J.norm(dim=1).max())


def test_agrees_with_quadprog_on_full_rank() -> None:
    quadprog = pytest.importorskip("quadprog")
    for seed in range(5):
        J = jacobian("conflicting", 20, 60, seed=seed)
        G = gram(J).numpy()
        Q, c = G[1:, 1:], G[1:, 0]
        lam_ref = quadprog.solve_qp(Q, -c, np.eye(19), np.zeros(19))[0]
        w = primary_aux(torch.from_numpy(G))
        np.testing.assert_allclose(w[1:].numpy(), lam_ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_scale_invariance_1e20(dtype: torch.dtype, tol: float) -> None:
    """Scaling task i's gradient by sᵢ leaves the cone unchanged: u(DGD) = s₀·u(G)."""
    J = jacobian("conflicting", 10, 30, seed=5)
    lo, hi = (-20, 20) if dtype == torch.float64 else (-8, 8)
    s = torch.logspace(lo, hi, 10, dtype=torch.float64)[
        torch.randperm(10, generator=torch.Generator().manual_seed(0))
    ]
    Js = J * s[:, None]
    w = primary_aux(gram(J))
    ws, info = primary_aux(gram(Js).to(dtype), compute_dtype=dtype, return_info=True)
    assert bool(info.converged)
    u = J.T @ w
    us = Js.T @ ws.double() / s[0]
    assert float((u - us).norm()) <= tol * 10 * float(u.norm() + J[0].norm())
    for g in [1e-20, 1e20] if dtype == torch.float64 else [1e-15, 1e15]:
        wg = primary_aux((gram(J) * g).to(dtype), compute_dtype=dtype)
        torch.testing.assert_close(wg.double(), w, rtol=tol, atol=tol)


def test_zero_gradients_get_zero_weight_and_no_nan() -> None:
    J = jacobian("conflicting", 6, 12, seed=2)
    J[2] = 0.0
    J[4] = 0.0
    G = gram(J)
    w = primary_aux(G)
    assert torch.isfinite(w).all()
    assert w[2] == 0 and w[4] == 0
    # one auxiliary with a zero gradient: closed form gives 0, not NaN
    G2 = gram(torch.stack([J[0], torch.zeros_like(J[0])]))
    assert torch.equal(primary_aux(G2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # zero primary: no step at all
    G3 = gram(torch.cat([torch.zeros_like(J[:1]), J[1:]]))
    w3 = primary_aux(G3)
    assert torch.isfinite(w3).all() and float((J[1:].T @ w3[1:]).norm()) <= 1e-12
    # all-zero Gram, for every solver
    Z = torch.zeros(4, 4, dtype=torch.float64)
    assert torch.equal(primary_aux(Z), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(min_norm_simplex(Z).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_closed_form_one_auxiliary() -> None:
    J = jacobian("conflicting", 2, 7, seed=11)
    G = gram(J)
    w = primary_aux(G)
    lam = max(0.0, -float(G[0, 1])) / float(G[1, 1])
    assert float(w[1]) == pytest.approx(lam, rel=1e-14)
    # the general solver (through the margin-free NNLS on a 1×1 block) agrees
    lam_nnls = nnls(G[1:, 1:], G[1:, 0])
    assert float(lam_nnls[0]) == pytest.approx(lam, rel=1e-12)


def test_batched_equals_one_by_one() -> None:
    kinds = KINDS * 3
    Gs = torch.stack([gram(jacobian(kind, 12, 20, seed=i)) for i, kind in enumerate(kinds)])
    Gs = Gs.reshape(3, len(KINDS), 12, 12)
    for n in (1, 4, 12):
        wb = primary_aux(Gs, n_primary=n)
        assert wb.shape == (3, len(KINDS), 12)
        for a in range(3):
            for b in range(len(KINDS)):
                G = Gs[a, b]
                w1 = primary_aux(G, n_primary=n)
                # the direction u = Jᵀw is unique: compare ⟨u, gᵢ⟩ = (Gw)ᵢ and ‖u_b − u_1‖
                scale = float(G.diagonal().max())
                torch.testing.assert_close(G @ wb[a, b], G @ w1, rtol=0, atol=1e-9 * scale)
                diff = wb[a, b] - w1
                assert float(diff @ G @ diff) <= 1e-18 * scale
                if KINDS[b] in ("random", "conflicting"):  # full rank: the weights are unique too
                    torch.testing.assert_close(wb[a, b], w1, rtol=1e-9, atol=1e-12)


def test_nnls_kkt_and_cvxpy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        k = int(rng.integers(1, 30))
        A = rng.standard_normal((k, int(rng.integers(1, 2 * k + 2))))
        Q = A @ A.T
        c = A @ rng.standard_normal(A.shape[1])  # c in range(Q): bounded
        x, info = nnls(torch.from_numpy(Q), torch.from_numpy(c), return_info=True)
        x = x.numpy()
        y = Q @ x + c
        assert (x >= 0).all()
        scale = 1 + np.abs(Q).max() * np.abs(x).sum() + np.abs(c).max()
        assert np.abs(np.minimum(x, y)).max() <= 1e-9 * scale
        xv = cp.Variable(k)
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A.T @ xv) + c @ xv), [xv >= 0])
        prob.solve(solver=cp.CLARABEL)
        ours = 0.5 * x @ Q @ x + c @ x
        assert ours <= prob.value + 1e-6 * (1 + abs(prob.value))


def test_nnls_unbounded_raises() -> None:
    Q = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    c = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="unbounded"):
        nnls(Q, c)


@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_margin_against_cvxpy_socp(margin: float) -> None:
    for seed in range(4):
        J = jacobian("conflicting", 5, 12, seed=seed)
        J = J / J.norm(dim=1, keepdim=True)
        G = gram(J)
        w, info = primary_aux(G, margin=margin, return_info=True)
        assert bool(info.converged)
        u = J.T @ w
        u_ref = torch.from_numpy(cvxpy_direction(J.numpy(), margin=margin))
        assert float((u - u_ref).norm()) <= 1e-5
        # the robust constraint holds: ⟨u, gᵢ⟩ ≥ margin·‖u‖
        assert bool((J[1:] @ u >= margin * u.norm() - 1e-8).all())


def test_relative_margin_is_cosine() -> None:
    J = jacobian("conflicting", 4, 10, seed=9) * torch.tensor(
        [[1.0], [3.0], [0.2], [7.0]], dtype=torch.float64
    )
    w = primary_aux(gram(J), margin=0.1, relative_margin=True)
    u = J.T @ w
    cos = (J[1:] @ u) / (J[1:].norm(dim=1) * u.norm())
    assert bool((cos >= 0.1 - 1e-8).all())


def test_margin_infeasible_gives_zero_step() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    w = primary_aux(gram(g), margin=0.1)
    assert float((g.T @ w).norm()) <= 1e-12


@pytest.mark.slow
def test_frank_wolfe_reference_converges_to_exact() -> None:
    for kind in ["random", "conflicting", "zero"]:
        J = jacobian(kind, 6, 15, seed=4)
        G = gram(J)
        exact = J.T @ primary_aux(G)
        approx = J.T @ primary_aux_frank_wolfe(G, iters=3000)
        assert float((exact - approx).norm()) <= 1e-6 * float(J.norm(dim=1).max())
        assert float(primary_aux_kkt_residual(primary_aux_frank_wolfe(G, iters=3000), G)) <= 1e-6


def test_bad_input_errors() -> None:
    G = gram(jacobian("random", 3, 5))
    with pytest.raises(ValueError, match="square"):
        primary_aux(G[:, :2])
    with pytest.raises(ValueError, match="symmetric"):
        bad = G.clone()
        bad[0, 1] += 1.0
        primary_aux(bad)
    with pytest.raises(FloatingPointError, match="non-finite"):
        bad = G.clone()
        bad[1, 1] = float("nan")
        primary_aux(bad)
    with pytest.raises(FloatingPointError, match="non-finite"):
        bad = G.clone()
        bad[0, 0] = float("inf")
        min_norm_simplex(bad)
    with pytest.raises(ValueError, match="n_primary"):
        primary_aux(G, n_primary=0)
    with pytest.raises(ValueError, match="n_primary"):
        primary_aux(G, n_primary=4)
    with pytest.raises(TypeError, match="floating"):
        primary_aux(torch.eye(3, dtype=torch.long))
    with pytest.raises(ValueError, match="margin"):
        primary_aux(G, margin=-1.0)
    with pytest.raises(ValueError, match="one primary"):
        primary_aux(G, n_primary=2, margin=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    Gs = torch.stack([gram(jacobian(kind, 32, 40, seed=i)) for i, kind in enumerate(KINDS)])
    w_cpu = primary_aux(Gs)
    w_gpu = primary_aux(Gs.float().cuda())
    assert w_gpu.device.type == "cuda"
    for i in range(len(KINDS)):
        assert kkt_primary_aux(w_gpu[i].cpu(), Gs[i]) <= 1e-4
    torch.testing.assert_close(
        Gs @ w_gpu.double().cpu().unsqueeze(-1), Gs @ w_cpu.unsqueeze(-1), rtol=1e-3, atol=1e-3
    )


def test_gram_that_requires_grad_is_accepted() -> None:
    J = jacobian("conflicting", 5, 9, seed=2).requires_grad_(True)
    G = J @ J.T  # still in a graph: the solvers treat it as data
    for n in (1, 5):
        w = primary_aux(G, n_primary=n)
        assert kkt_primary_aux(w.detach(), G.detach(), n=n) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Regressions: mixed scales, certificates on the original problem, unbounded NNLS, empty
# batches, trivial cones, parameter validation, reduced precisions, compiled batched pivoting.

MIXED_J = [[1e-6, 0.0], [0.0, 1.0], [1e6, 1e6]]


def test_mixed_scales_min_norm_point() -> None:
    J = torch.tensor(MIXED_J, dtype=torch.float64)
    G = gram(J)
    # the min-norm point of the hull is ≈ g1 (its norm 1e-6); the old answer was [0.857, 0.143, 0]
    for w, info in [
        min_norm_simplex(G, return_info=True),
        primary_aux(G, n_primary=3, return_info=True),
        primary_aux(G, n_primary=2, return_info=True),
    ]:
        assert float(w[0]) >= 1 - 1e-9 and float(w[2]) <= 1e-12
        assert float((J.T @ w).norm()) <= 1e-6
        assert bool(info.converged) and float(info.kkt_residual) <= 1e-12
        assert kkt_residual_reference(w, G, 3 if float(w[:3].sum()) else 2) <= 1e-12
    W, status = _compiled.min_norm(G.unsqueeze(0).numpy().copy(), 80)
    assert (
        int(status[0]) == 0
        and W[0, 0] >= 1 - 1e-9
        and float((J.T @ torch.from_numpy(W[0])).norm()) <= 1e-6
    )


def test_certificate_rejects_the_old_wrong_answer() -> None:
    G = gram(torch.tensor(MIXED_J, dtype=torch.float64))
    wrong = torch.tensor([0.857, 0.143, 0.0], dtype=torch.float64)
    assert float(primary_aux_kkt_residual(wrong, G, 3)) >= 0.1
    assert kkt_residual_reference(wrong, G, 3) >= 0.1


@pytest.mark.parametrize("big,small", [(2.0**26, 1.0), (1e10, 1e-3), (1e20, 1e-20)])
def test_cancelling_large_pair_beside_a_small_gradient(big: float, small: float) -> None:
    # g1 + g2 = (0, 2) and g3 = (0, -small): 0 is in the hull, with weights (a, a, 1 - 2a),
    # 2a·1 = (1 - 2a)·small; the pivoting's ridge alone stopped at d ≈ g3 (|d| ≈ 1 at 2^26)
    J = torch.tensor([[big, 1.0], [-big, 1.0], [0.0, -small]], dtype=torch.float64)
    G = gram(J)
    a = small / (2 * (1 + small))
    expected = torch.tensor([a, a, 1 - 2 * a], dtype=torch.float64)
    w = min_norm_simplex(G)
    W, _ = _compiled.min_norm(G.unsqueeze(0).numpy().copy(), 80)
    for ans in (w, torch.from_numpy(W[0])):
        if big <= 2.0**26:  # G holds the answer exactly
            torch.testing.assert_close(ans, expected, rtol=1e-9, atol=1e-12)
        assert kkt_residual_reference(ans, G, 3) <= 1e-12


def test_nnls_unbounded_singular_direction_raises() -> None:
    Q = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="unbounded"):
        nnls(Q, torch.tensor([-1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="unbounded"):  # float32 arithmetic too
        nnls(Q.float(), torch.tensor([-1.0, -1.0]), compute_dtype=torch.float32)
    # a bounded float32 problem with a large answer (Q nearly singular) is solved, not refused
    Qn = torch.tensor([[1.0, -0.999], [-0.999, 1.0]])
    xn = nnls(Qn, torch.tensor([-1.0, -1.0]), compute_dtype=torch.float32)
    torch.testing.assert_close(xn, torch.full((2,), 1000.0), rtol=2e-3, atol=0)  # (1 - 0.999)x = 1
    # in a batch, one unbounded problem is enough
    with pytest.raises(ValueError, match="unbounded"):
        nnls(
            torch.stack([torch.eye(2, dtype=torch.float64), Q]),
            torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64),
        )
    # the same singular Q without a descent direction is bounded: x = (1, 0) + t(1, 1) all optimal
    x, info = nnls(Q, torch.tensor([-1.0, 1.0], dtype=torch.float64), return_info=True)
    y = Q @ x + torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert bool(info.converged) and float(torch.minimum(x, y).abs().max()) <= 1e-9
    assert float(x.abs().max()) <= 10.0


def test_empty_batches() -> None:
    for shape in [(0, 3, 3), (2, 0, 3, 3)]:
        G = torch.zeros(shape, dtype=torch.float64)
        zeros = torch.zeros(shape[:-1], dtype=torch.float64)
        for call in (
            lambda G=G: min_norm_simplex(G, return_info=True),
            lambda G=G: primary_aux(G, return_info=True),
            lambda G=G: primary_aux(G, n_primary=2, return_info=True),
            lambda G=G: primary_aux(G, margin=0.1, return_info=True),
            lambda G=G, c=zeros: nnls(G, c, return_info=True),
        ):
            w, info = call()
            assert w.shape == shape[:-1] and info.converged.shape == shape[:-2]


def test_margin_zero_steps_are_converged() -> None:
    cases = [
        # opposite auxiliaries with a margin: the cone is {0}
        ([[1.0, 0.2], [1.0, 0.0], [-1.0, 0.0]], 0.1, False),
        ([[0.2771, 1.2262], [1.1267, 0.3797], [-1.1267, -0.3797]], 1.362, False),
        # g0 in the polar cone of a nontrivial cone: the closest point is 0
        ([[-0.0812, 2.3164], [1.4398, -3.3585], [-1.4214, -2.2358]], 0.7612, False),
        ([[0.0, 0.0], [1.0, 2.0]], 0.5, True),  # zero primary gradient
    ]
    for J, margin, rel in cases:
        J = torch.tensor(J, dtype=torch.float64)
        w, info = primary_aux(gram(J), margin=margin, relative_margin=rel, return_info=True)
        assert float((J.T @ w).norm()) <= 1e-12
        assert bool(info.converged), (J, info)
        assert float(info.kkt_residual) <= 1e-8


def test_margin_certificate_on_a_nonzero_step() -> None:
    J = jacobian("conflicting", 5, 12, seed=1)
    J = J / J.norm(dim=1, keepdim=True)
    w, info = primary_aux(gram(J), margin=0.05, return_info=True)
    assert float(w[0]) > 0 and bool(info.converged) and float(info.kkt_residual) <= 1e-8


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(eps="0"), TypeError, "eps"),
        (dict(eps=torch.tensor(0.1)), TypeError, "eps"),
        (dict(margin=float("nan")), ValueError, "margin"),
        (dict(margin=float("inf")), ValueError, "margin"),
        (dict(max_iter=-1), ValueError, "max_iter"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(max_iter=2.5), TypeError, "max_iter"),
        (dict(max_iter=True), TypeError, "max_iter"),
        (dict(n_primary=True), ValueError, "n_primary"),
        (dict(compute_dtype=torch.int32), TypeError, "compute_dtype"),
    ],
)
def test_solver_parameter_validation(kwargs, exc, match) -> None:
    G = gram(jacobian("random", 3, 5))
    with pytest.raises(exc, match=match):
        primary_aux(G, **kwargs)


def test_nnls_parameter_validation() -> None:
    Q = torch.eye(3, dtype=torch.float64)
    c = -torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="zero_tol"):
        nnls(Q, c, zero_tol=float("nan"))
    with pytest.raises(ValueError, match="zero_tol"):
        nnls(Q, c, zero_tol=-1e-3)
    with pytest.raises(ValueError, match="max_iter"):
        nnls(Q, c, max_iter=-1)
    with pytest.raises(TypeError, match="fixed_zero must be a boolean"):
        nnls(Q, c, fixed_zero=torch.zeros(3))
    with pytest.raises(TypeError, match="max_iter"):
        min_norm_simplex(Q, max_iter=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_grams(dtype: torch.dtype) -> None:
    J = jacobian("conflicting", 4, 9, seed=3)
    G = gram(J)
    for n in (1, 2, 4):
        ref = primary_aux(G, n_primary=n)
        for cd in (None, dtype):  # a reduced compute dtype is computed in float32
            w, info = primary_aux(G.to(dtype), n_primary=n, compute_dtype=cd, return_info=True)
            assert w.dtype == dtype and info.kkt_residual.dtype == dtype
            assert bool(torch.isfinite(w).all())
            torch.testing.assert_close(w.double(), ref, rtol=0.05, atol=0.05)
    x = nnls(G.to(dtype), -G[:, 0].to(dtype))
    assert x.dtype == dtype


def test_certificate_is_recomputed_on_the_users_gram() -> None:
    J = jacobian("rank_half", 12, 20, seed=4)
    G = gram(J)
    for n in (1, 5):
        w, info = primary_aux(G, n_primary=n, return_info=True)
        torch.testing.assert_close(
            info.kkt_residual, primary_aux_kkt_residual(w, G, n), rtol=1e-3, atol=1e-16
        )
        # and it sees a wrong answer: move 1 % of the weight onto the last task
        w_bad = w.clone()
        w_bad[-1] += 0.01 * float(w[:n].sum())
        assert float(primary_aux_kkt_residual(w_bad, G, n)) >= 1e-4
    x, info = nnls(G[1:, 1:], G[1:, 0], return_info=True)
    assert bool(info.converged) and float(info.kkt_residual) <= 1e-10


def test_compiled_batched_pivot_equals_the_torch_batched_pivot(monkeypatch) -> None:
    import importlib

    nnls_module = importlib.import_module("taskgrad.solvers.nnls")

    Gs = torch.stack([gram(jacobian(kind, 24, 30, seed=i)) for i, kind in enumerate(KINDS)])
    compiled = primary_aux(Gs)
    compiled_m = primary_aux(Gs, n_primary=6)
    monkeypatch.setattr(nnls_module, "_use_compiled", lambda: False)
    batched = primary_aux(Gs)
    batched_m = primary_aux(Gs, n_primary=6)
    for a, b in ((compiled, batched), (compiled_m, batched_m)):
        scale = Gs.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True)
        torch.testing.assert_close(
            (Gs @ a.unsqueeze(-1)).squeeze(-1) / scale,
            (Gs @ b.unsqueeze(-1)).squeeze(-1) / scale,
            rtol=0,
            atol=1e-8,
        )


def test_relative_margin_with_mixed_scales_agrees_with_cvxpy() -> None:
    for seed in range(3):
        scales = torch.tensor([1.0, 1e-3, 1e3, 1e-2, 1e2], dtype=torch.float64)
        J = jacobian("conflicting", 5, 12, seed=seed) * scales[:, None]
        w, info = primary_aux(gram(J), margin=0.2, relative_margin=True, return_info=True)
        assert bool(info.converged)
        u = J.T @ w
        # the same cone with unit auxiliaries and an absolute margin, primal form in cvxpy
        Jn = torch.cat([J[:1], J[1:] / J[1:].norm(dim=1, keepdim=True)])
        u_ref = torch.from_numpy(cvxpy_direction(Jn.numpy(), margin=0.2))
        assert float((u - u_ref).norm()) <= 1e-5 * float(J[0].norm())


def test_certificate_is_finite_when_a_product_of_scales_underflows():
    # σ₂·V underflows to 0 although σ₂ and V are positive (a subnormal primary gradient beside a
    # tiny auxiliary): the residual must stay a number, and the right answer is certified
    J = torch.tensor([[-1.1125e-308], [1.0], [8.9092e-127]], dtype=torch.float64)
    w, info = primary_aux(J @ J.T, return_info=True)
    assert bool(info.converged) and float(info.kkt_residual) <= 1e-12
    assert w[0] == 1.0 and w[2] == 0.0
