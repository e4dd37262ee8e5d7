"""Methods TorchJD lacks, checked against a direct transcription of the paper's update written
here on explicit Jacobians (per-task gradient vectors, no Gram matrix)."""

from __future__ import annotations

import pytest
import torch

from taskgrad import methods as M
from taskgrad.solvers import min_norm_simplex
from tests.methods.methods_helpers import gram, jacobian, rel

TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12)


def losses_for(seed: int, k: int) -> torch.Tensor:
    return (
        torch.rand(k, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64) * 2
        + 0.1
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["l2", "loss", "loss+l2", "none"])
def test_mgda_ub_normalizations(seed, norm):
    # Sener & Koltun's loop: normalize each gradient, min-norm element (checked with cvxpy),
    # scale[t] = sol[t] applied to the raw losses.
    cp = pytest.importorskip("cvxpy")
    J, L = jacobian(4, 9, seed), losses_for(seed, 4)
    gn = {
        "l2": J.norm(dim=1),
        "loss": L,
        "loss+l2": L * J.norm(dim=1),
        "none": torch.ones(4, dtype=J.dtype),
    }[norm]
    Jn = (J / gn[:, None]).numpy()
    a = cp.Variable(4)
    cp.Problem(cp.Minimize(cp.sum_squares(Jn.T @ a)), [a >= 0, cp.sum(a) == 1]).solve(cp.CLARABEL)
    ref = torch.tensor(a.value)
    ours = M.MGDAUB(norm)(gram=gram(J), losses=L)
    d_ours, d_ref = ours @ (J / gn[:, None]), ref @ (J / gn[:, None])
    assert rel(d_ours, d_ref) < 1e-5  # the min-norm point (unique) matches
    assert abs(float(ours.sum()) - 1) < 1e-12 and bool((ours >= 0).all())
    scaled = M.MGDAUB(norm, scale_weights=True)(gram=gram(J), losses=L)
    assert rel(scaled @ J, d_ours) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_db_mtl_gradient_magnitude_step(seed):
    J, L = jacobian(4, 9, seed), losses_for(seed, 4)
    eps = 1e-8
    g_log = J / (L + eps)[:, None]  # ∇ log(L + eps)
    u = g_log.norm(dim=1)
    alpha = u.max() / (u + eps)
    d_ref = (alpha[:, None] * g_log).sum(0)
    assert rel(M.DBMTL()(gram=gram(J), losses=L) @ J, d_ref) < 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weighted", [False, True])
def test_cosine_gated_aux(seed, weighted):
    J = jacobian(5, 7, seed)
    d_ref = J[0].clone()
    for i in range(1, 5):
        cos = torch.dot(J[0], J[i]) / (J[0].norm() * J[i].norm())
        if weighted:
            d_ref += max(float(cos), 0.0) * J[i]
        elif cos > 0:
            d_ref += J[i]
    assert rel(M.CosineGatedAux(weighted)(gram=gram(J)) @ J, d_ref) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_aux(seed):
    J = jacobian(5, 7, seed)
    d_ref = J[0].clone()
    for i in range(1, 5):
        gi = J[i].clone()
        dot = torch.dot(gi, J[0])
        if dot < 0:
            gi = gi - dot / J[0].norm() ** 2 * J[0]
        d_ref += gi
    assert rel(M.PCGradAux()(gram=gram(J)) @ J, d_ref) < 1e-12


def test_ol_aux_online_weights():
    lr, horizon = 0.05, 2
    m = M.OLAux(lr=lr, horizon=horizon, nonnegative=False)
    w_ref = torch.ones(4, dtype=torch.float64)
    acc = torch.zeros(4, dtype=torch.float64)
    for t in range(7):
        J = jacobian(4, 6, t)
        w = m(gram=gram(J))
        assert rel(w, w_ref) < 1e-12
        acc += J @ J[0]  # ⟨g0, g_i⟩
        if (t + 1) % horizon == 0:
            w_ref = w_ref + lr * acc
            w_ref[0] = 1.0
            acc.zero_()


def test_pcgrad_transcription_explicit_vectors():
    # Yu et al. Algorithm 1 on vectors with a fixed order, against our weights with the same order.
    J = jacobian(4, 6, 5)
    J[2] = -J[0] + 0.2 * J[2]
    gen = torch.Generator().manual_seed(3)
    ours = M.PCGrad(generator=gen)(gram=gram(J))
    gen.manual_seed(3)
    d_ref = torch.zeros(6, dtype=torch.float64)
    for i in range(4):
        gi = J[i].clone()
        for j in torch.randperm(4, generator=gen).tolist():
            if j == i:
                continue
            dot = torch.dot(gi, J[j])
            if dot < 0:
                gi -= dot / J[j].norm() ** 2 * J[j]
        d_ref += gi
    assert rel(ours @ J, d_ref) < 1e-12


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.5, 1.0, 3.0])
def test_generalized_mean_is_the_gradient_of_the_power_mean(gamma):
    L = losses_for(0, 5)
    Lr = L.clone().requires_grad_(True)
    Mg = torch.exp(torch.log(Lr).mean()) if gamma == 0 else (Lr.pow(gamma).mean()).pow(1 / gamma)
    Mg.backward()
    assert rel(M.GeneralizedMean(gamma)(losses=L), Lr.grad) < 1e-12


def test_log_sum_initial_prior_and_gradient_normalization():
    L0, L1 = losses_for(0, 3), losses_for(1, 3)
    assert rel(M.LogSum()(losses=L1), 1 / L1) < 1e-15
    m = M.InitialLossNormalization()
    m(losses=L0)
    assert rel(m(losses=L1), 1 / L0) < 1e-15
    prior = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    assert rel(M.PriorLossNormalization(prior)(losses=L1), 1 / prior) < 1e-15
    J = jacobian(3, 5, 2)
    d = M.GradientNormalization()(gram=gram(J)) @ J
    assert rel(d, (J / J.norm(dim=1, keepdim=True)).sum(0)) < 1e-12
    d = M.GradientNormalization("mean")(gram=gram(J)) @ J
    assert rel(d, J.norm(dim=1).mean() * (J / J.norm(dim=1, keepdim=True)).sum(0)) < 1e-12


def test_gradnorm_matches_algorithm_1_with_autograd():
    # Chen et al. Algorithm 1 on explicit gradients: L_grad = Σ|‖w_i g_i‖ − const|, SGD on w,
    # renormalize Σw = k. Ours reads ‖g_i‖ from the Gram diagonal and steps internally.
    lr, alpha, k = 0.05, 1.5, 3
    ours = M.GradNorm(alpha=alpha, lr=lr, optimizer="sgd")
    w = torch.ones(k, dtype=torch.float64, requires_grad=True)
    L0 = None
    for t in range(6):
        J = jacobian(k, 8, t) * torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)[:, None]
        L = losses_for(t, k)
        L0 = L.clone() if L0 is None else L0
        got = ours(gram=gram(J), losses=L)
        assert rel(got, w.detach()) < 1e-12
        Gw = (w[:, None] * J).norm(dim=1)
        Lt = L / L0
        r = Lt / Lt.mean()
        target = (Gw.mean() * r**alpha).detach()
        (Gw - target).abs().sum().backward()
        with torch.no_grad():
            w -= lr * w.grad
            w.grad = None
            w.copy_(k * w.clamp_min(0) / w.clamp_min(0).sum())


@pytest.mark.parametrize("seed", range(3))
def test_nash_mtl_solves_the_bargaining_problem(seed):
    # the bargaining direction maximizes Σ log⟨g_i, d⟩ over ‖d‖ ≤ 1 (cvxpy on explicit J):
    # d* = Jᵀα/‖Jᵀα‖ with α from ours.
    cp = pytest.importorskip("cvxpy")
    J = jacobian(4, 6, seed)
    J[1] = -0.4 * J[0] + J[1]
    d = cp.Variable(6)
    Jn = J.numpy()
    prob = cp.Problem(cp.Maximize(cp.sum(cp.log(Jn @ d))), [cp.norm(d) <= 1])
    prob.solve(cp.CLARABEL, **TIGHT)
    alpha = M.NashMTL(max_norm=0)(gram=gram(J))
    ours = alpha @ J
    assert rel(ours / ours.norm(), torch.tensor(d.value)) < 1e-5
    G = gram(J)
    assert float((alpha * (G @ alpha) - 1).abs().max()) < 1e-10


def test_cagrad_kkt_against_direct_formula():
    # Liu et al.: d maximizes min_i ⟨g_i, d⟩ over ‖d − g0‖ ≤ c‖g0‖ (cvxpy on explicit J).
    cp = pytest.importorskip("cvxpy")
    J = jacobian(4, 7, 2)
    J[1] = -0.7 * J[0] + 0.2 * J[1]
    g0 = J.mean(0).numpy()
    c = 0.5
    d = cp.Variable(7)
    t = cp.Variable()
    cp.Problem(
        cp.Maximize(t), [J.numpy() @ d >= t, cp.norm(d - g0) <= c * float((g0**2).sum() ** 0.5)]
    ).solve(cp.CLARABEL, **TIGHT)
    ours = M.CAGrad(c=c)(gram=gram(J)) @ J
    best = float((J @ torch.tensor(d.value)).min())
    assert float((J @ ours).min()) >= best - 1e-7
    assert float((ours - J.mean(0)).norm()) <= c * float(J.mean(0).norm()) * (1 + 1e-9)


def test_mgda_min_norm_reference_is_consistent():
    J = jacobian(3, 5, 0)
    a = min_norm_simplex(gram(J))
    assert abs(float(a.sum()) - 1) < 1e-12
