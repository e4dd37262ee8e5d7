"""The auxiliary-learning peers: MetaBalance, AuxiNash, Auto-λ and AuxiLearn (linear).

Each is checked against its authors' algorithm written out independently here (on models whose
gradients and Hessians are explicit matrices), plus the method's own defining equations.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad.methods.auxiliary.auto_lambda import AutoLambda
from taskgrad.methods.auxiliary.auxilearn import AuxiLearn
from taskgrad.methods.auxiliary.auxinash import AuxiNash, preference_nash_weights
from taskgrad.methods.auxiliary.metabalance import MetaBalance
from taskgrad.methods.errors import UndefinedMethodError


@pytest.fixture(autouse=True)
def _float64():
    """These tests compare float64 transcriptions; the default dtype is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------- a model with explicit derivatives
class LinReg:
    """k least-squares tasks Lᵢ(θ) = ½‖Xᵢθ − yᵢ‖²/n on one parameter vector θ (P,), and a
    validation task V(θ) = ½‖Xvθ − yv‖²/n: gradients Xᵢᵀ(Xᵢθ − yᵢ)/n, Hessians XᵢᵀXᵢ/n."""

    def __init__(self, k: int = 3, P: int = 5, n: int = 7, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(k, n, P, generator=g)
        self.y = torch.randn(k, n, generator=g)
        self.Xv = torch.randn(n, P, generator=g)
        self.yv = torch.randn(n, generator=g)
        self.n = n
        self.theta = torch.randn(P, generator=g).requires_grad_(True)

    def losses(self) -> torch.Tensor:
        r = torch.einsum("knp,p->kn", self.X, self.theta) - self.y
        return 0.5 * (r**2).sum(-1) / self.n

    def val(self) -> torch.Tensor:
        return 0.5 * ((self.Xv @ self.theta - self.yv) ** 2).sum() / self.n

    # explicit quantities at a given θ
    def J(self, th: torch.Tensor) -> torch.Tensor:
        r = torch.einsum("knp,p->kn", self.X, th) - self.y
        return torch.einsum("knp,kn->kp", self.X, r) / self.n

    def H(self, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("k,knp,knq->pq", w, self.X, self.X) / self.n

    def gval(self, th: torch.Tensor) -> torch.Tensor:
        return self.Xv.T @ (self.Xv @ th - self.yv) / self.n


# ---------------------------------------------------------------- MetaBalance
def _metabalance_reference(
    grads: list[torch.Tensor], relax: float, beta: float
) -> list[torch.Tensor]:
    """The authors' per-parameter loop for one parameter tensor, one step per entry of grads."""
    norms = [0.0] * grads[0].shape[0]
    out = []
    for J in grads:
        total = torch.zeros_like(J[0])
        for i in range(J.shape[0]):
            norms[i] = norms[i] * beta + (1 - beta) * float(J[i].norm())
            gi = (norms[0] * J[i] / norms[i]) * relax + J[i] * (1.0 - relax)
            total = total + gi
        out.append(total)
    return out


@pytest.mark.parametrize("relax,beta", [(0.7, 0.9), (1.0, 0.5), (0.0, 0.9)])
def test_metabalance_matches_authors_loop(relax: float, beta: float) -> None:
    g = torch.Generator().manual_seed(1)
    grads = [
        torch.randn(4, 6, generator=g) * torch.tensor([[1.0], [10.0], [0.1], [3.0]]) * (1 + t)
        for t in range(6)
    ]
    ref = _metabalance_reference(grads, relax, beta)
    mb = MetaBalance(relax_factor=relax, beta=beta)
    for J, d_ref in zip(grads, ref, strict=True):
        d = mb.aggregate(J)
        torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)


def test_metabalance_strategies_and_zero_gradient() -> None:
    G = torch.diag(torch.tensor([4.0, 16.0, 1.0, 0.0]))  # norms 2, 4, 1, 0
    w_all = MetaBalance(relax_factor=1.0)(gram=G)
    torch.testing.assert_close(w_all, torch.tensor([1.0, 0.5, 2.0, 1.0]))
    w_red = MetaBalance(relax_factor=1.0, strategy="reduce")(gram=G)
    torch.testing.assert_close(w_red, torch.tensor([1.0, 0.5, 1.0, 1.0]))
    w_enl = MetaBalance(relax_factor=1.0, strategy="enlarge")(gram=G)
    torch.testing.assert_close(w_enl, torch.tensor([1.0, 1.0, 2.0, 1.0]))


def test_metabalance_state_dict_resumes() -> None:
    g = torch.Generator().manual_seed(2)
    Js = [torch.randn(3, 4, generator=g) for _ in range(4)]
    Gs = [A @ A.T for A in Js]
    a = MetaBalance()
    for G in Gs[:2]:
        a(gram=G)
    b = MetaBalance()
    b.load_state_dict(a.state_dict())
    for G in Gs[2:]:
        torch.testing.assert_close(a(gram=G), b(gram=G))


# ---------------------------------------------------------------- AuxiNash
def _cvx_preference_nash(G: np.ndarray, p: np.ndarray) -> np.ndarray:
    L = np.linalg.cholesky(G + 1e-12 * np.eye(len(p)))
    a = cp.Variable(len(p), pos=True)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L.T @ a) - p @ cp.log(a))).solve(solver=cp.CLARABEL)
    return a.value


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_preference_nash_weights_agree_with_cvxpy(seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(k, 8, generator=g) + 2.0  # a common ascent direction exists (all near +1)
    G = J @ J.T
    p = torch.rand(k, generator=g) + 0.1
    a, ok = preference_nash_weights(G, p)
    assert bool(ok)
    torch.testing.assert_close(a * (G @ a), p, rtol=1e-9, atol=1e-12)  # the defining equation
    ref = torch.from_numpy(_cvx_preference_nash(G.numpy(), p.numpy()))

    def f(x: torch.Tensor) -> float:
        return float(0.5 * x @ G @ x - p @ x.log())

    assert f(a) <= f(ref) + 1e-9 * (1 + abs(f(ref)))  # at least as good as the conic solver
    torch.testing.assert_close(a, ref, rtol=1e-2, atol=1e-4)


def test_auxinash_alpha_jacobian_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(3)
    J = torch.randn(3, 6, generator=g) + 1.5
    G = J @ J.T
    m = AuxiNash(max_norm=0.0)
    m(gram=G)
    D = m.alpha_jacobian()
    Gs = G / torch.linalg.matrix_norm(G)
    p0 = m.preferences
    h = 1e-4
    cols = []
    for j in range(3):
        e = torch.zeros(3)
        e[j] = h
        cols.append(
            (preference_nash_weights(Gs, p0 + e)[0] - preference_nash_weights(Gs, p0 - e)[0])
            / (2 * h)
        )
    torch.testing.assert_close(D, torch.stack(cols, -1), rtol=1e-5, atol=1e-7)


def test_auxinash_is_nash_mtl_direction_and_non_conflicting() -> None:
    g = torch.Generator().manual_seed(4)
    J = torch.randn(4, 9, generator=g) + 1.0
    G = J @ J.T
    w = AuxiNash(max_norm=0.0)(gram=G)
    assert bool(((G @ w) > 0).all())
    Gs = G / torch.linalg.matrix_norm(G)
    torch.testing.assert_close(w * (Gs @ w), torch.ones(4), rtol=1e-9, atol=1e-12)
    w1 = AuxiNash(max_norm=1.0)(gram=G)
    assert float(w1 @ G @ w1) <= 1.0 + 1e-9


def test_auxinash_undefined_raises_or_reuses_previous() -> None:
    G_ok = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    G_bad = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # opposite gradients: 0 in the hull
    with pytest.raises(UndefinedMethodError, match="on_undefined"):
        AuxiNash()(gram=G_bad)
    m = AuxiNash(on_undefined="previous", max_norm=0.0)
    w_ok = m(gram=G_ok)
    torch.testing.assert_close(m(gram=G_bad), w_ok)


def test_auxinash_preference_step_transcribes_the_authors_hyperstep() -> None:
    model = LinReg(k=3, P=4, n=9, seed=5)
    m = AuxiNash(max_norm=0.0, meta_lr=0.05, hpo_lr=0.1, terms=3, max_grad_norm=None)
    th = model.theta.detach()
    J = model.J(th)
    G = J @ J.T
    alpha = m(gram=G)
    p = m.preferences
    # the authors' Hypergrad + auxinash_hyperstep, written with explicit matrices
    H = model.H(alpha)
    v = model.gval(th)
    acc = v.clone()
    for _ in range(3):
        v = v - 0.1 * (H @ v)
        acc = acc + v
    alpha_hypergrads = J @ acc  # -(-J v2)
    Gs = G / torch.linalg.matrix_norm(G)
    dalpha_dp = torch.linalg.inv(Gs + torch.diag(p / alpha**2)) @ torch.diag(1 / alpha)
    expected = -alpha_hypergrads @ dalpha_dp
    got = m.update([model.theta], model.losses, model.val)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    p_new = (p - 0.05 * expected).clamp_min(1e-4)  # SGD's first step: buffer = grad
    torch.testing.assert_close(m.preferences, 3 * p_new / p_new.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.theta.detach(), th)  # θ untouched


# ---------------------------------------------------------------- Auto-λ
@pytest.mark.parametrize("with_optimizer", [False, True])
def test_auto_lambda_transcribes_the_authors_unrolled_backward(with_optimizer: bool) -> None:
    model = LinReg(k=3, P=5, n=8, seed=6)
    eta = 0.3
    m = AutoLambda(init=0.1, meta_lr=0.01)
    opt = None
    if with_optimizer:
        opt = torch.optim.SGD([model.theta], lr=eta, momentum=0.9, weight_decay=1e-2)
        model.losses().sum().backward()
        opt.step()  # fills the momentum buffer
        opt.zero_grad()
    th = model.theta.detach().clone()
    lam = torch.full((3,), 0.1)
    J = model.J(th)
    step = lam @ J
    if with_optimizer:
        step = step + 0.9 * opt.state[model.theta]["momentum_buffer"] + 1e-2 * th
    th2 = th - eta * step
    expected = -eta * (J @ model.gval(th2))
    got = m.update([model.theta], model.losses, model.val, lr=eta, optimizer=opt)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(model.theta.detach(), th)
    # Adam's first step moves each λᵢ by −lr·sign(gradᵢ) (bias-corrected m/√v = ±1, up to eps)
    ref = lam.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref], lr=0.01)
    ref.grad = expected.clone()
    adam.step()
    torch.testing.assert_close(m.weights, ref.detach())
    torch.testing.assert_close(m(losses=torch.ones(3)), ref.detach())


def test_auto_lambda_finite_difference_agrees_with_exact() -> None:
    a = LinReg(k=3, P=5, n=8, seed=7)
    b = LinReg(k=3, P=5, n=8, seed=7)
    ex = AutoLambda(hessian="exact").update([a.theta], a.losses, a.val, lr=0.2)
    fd = AutoLambda(hessian="finite-difference").update([b.theta], b.losses, b.val, lr=0.2)
    torch.testing.assert_close(
        fd, ex, rtol=1e-6, atol=1e-10
    )  # the losses are quadratic: exact up to rounding


def test_auto_lambda_state_dict_resumes_meta_learning() -> None:
    model = LinReg(seed=8)
    a = AutoLambda(meta_lr=0.05)
    a.update([model.theta], model.losses, model.val, lr=0.1)
    b = AutoLambda(meta_lr=0.05)
    b.load_state_dict(a.state_dict())
    a.update([model.theta], model.losses, model.val, lr=0.1)
    b.update([model.theta], model.losses, model.val, lr=0.1)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)


def test_meta_methods_reject_bad_closures() -> None:
    model = LinReg(seed=9)
    with pytest.raises(ValueError, match="train_losses"):
        AutoLambda().update([model.theta], lambda: model.losses().sum(), model.val, lr=0.1)
    with pytest.raises(ValueError, match="val_loss"):
        AutoLambda().update([model.theta], model.losses, lambda: model.losses(), lr=0.1)
    with pytest.raises(RuntimeError, match="unbatched call"):
        AuxiNash().update([model.theta], model.losses, model.val)


# ---------------------------------------------------------------- AuxiLearn
@pytest.mark.slow
def test_auxilearn_hypergradient_is_the_neumann_series_and_tends_to_the_ift() -> None:
    model = LinReg(k=3, P=4, n=12, seed=10)
    th = model.theta.detach()
    J = model.J(th)
    phi = torch.ones(3)
    H = model.H(phi)
    gv = model.gval(th)
    m = AuxiLearn(hpo_lr=0.05, terms=3)
    acc, v = gv.clone(), gv.clone()
    for _ in range(3):
        v = v - 0.05 * (H @ v)
        acc = acc + v
    torch.testing.assert_close(
        m.hypergradient([model.theta], model.losses, model.val), -(J @ acc), rtol=1e-10, atol=1e-13
    )
    # with many terms, η·(the series) → H⁻¹: the implicit-function-theorem hypergradient
    long = AuxiLearn(hpo_lr=0.05, terms=4000).hypergradient([model.theta], model.losses, model.val)
    ift = -(J @ torch.linalg.solve(H, gv))
    torch.testing.assert_close(0.05 * long, ift, rtol=1e-6, atol=1e-9)


def test_auxilearn_update_is_sgd_then_clamp() -> None:
    model = LinReg(seed=11)
    m = AuxiLearn(init=0.01, meta_lr=10.0, weight_decay=0.0, max_grad_norm=None)
    hyper = m.update([model.theta], model.losses, model.val)
    expected = (0.01 - 10.0 * hyper).clamp_min(0.0)
    torch.testing.assert_close(m.weights, expected)
    assert bool((m.weights >= 0).all())


# ---------------------------------------------------------------- PrimaryAux's progress margin
def _cvx_progress(J: np.ndarray, tau: float) -> np.ndarray | None:
    g0, A = J[0], J[1:]
    b = tau * np.linalg.norm(g0) * np.linalg.norm(A, axis=1)
    u = cp.Variable(J.shape[1])
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(u - g0)), [A @ u >= b])
    prob.solve(solver=cp.CLARABEL)
    return None if prob.status in ("infeasible", "infeasible_inaccurate") else u.value


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.sampled_from([0.0, 0.05, 0.3, 0.8]))
def test_progress_margin_kkt_and_agreement_with_cvxpy(seed: int, k: int, tau: float) -> None:
    from taskgrad.methods.auxiliary._progress import progress_margin_weights

    g = torch.Generator().manual_seed(seed)
    J = torch.randn(k, 7, generator=g) * torch.rand(k, 1, generator=g).mul(10).add(0.1)
    G = J @ J.T
    w, active, infeasible = progress_margin_weights(G, tau)
    ref = _cvx_progress(J.numpy(), tau)
    assert bool(infeasible) == (ref is None)
    if ref is None:
        torch.testing.assert_close(w, progress_margin_weights(G, 0.0)[0])
        return
    u = w @ J
    b = tau * J[0].norm() * J[1:].norm(dim=1)
    slack = J[1:] @ u - b
    scale = float(J.norm(dim=1).max() ** 2)
    assert float(w[0]) == 1.0 and bool((w[1:] >= 0).all())
    assert bool((slack >= -1e-9 * scale).all())  # primal feasibility
    assert float((w[1:] * slack).abs().max()) <= 1e-8 * scale * (
        1 + float(w[1:].max())
    )  # complementarity
    torch.testing.assert_close(u, torch.from_numpy(ref), rtol=1e-4, atol=1e-5 * scale**0.5)
    torch.testing.assert_close(active, w[1:] > 0)


def test_progress_margin_reports_infeasible_and_falls_back_to_tau_zero() -> None:
    from taskgrad.methods.auxiliary._progress import progress_margin_weights

    J = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 0.0]])  # opposite auxiliaries
    w, _, infeasible = progress_margin_weights(J @ J.T, 0.1)
    assert bool(infeasible)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.0]))
    # a zero auxiliary gradient is no constraint; the margin still binds the other one
    J2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    w2, active2, inf2 = progress_margin_weights(J2 @ J2.T, 0.5)
    assert not bool(inf2)
    u = w2 @ J2
    torch.testing.assert_close(u, torch.tensor([1.0, 0.5]))  # ⟨u, e₂⟩ = 0.5·‖g₀‖
    torch.testing.assert_close(active2, torch.tensor([True, False]))


def test_progress_margin_is_batched_and_invariant_to_auxiliary_scale() -> None:
    from taskgrad.methods.auxiliary._progress import progress_margin_weights

    g = torch.Generator().manual_seed(12)
    J = torch.randn(4, 3, 6, generator=g)
    G = J @ J.transpose(-1, -2)
    wb = progress_margin_weights(G, 0.2)[0]
    for i in range(4):
        torch.testing.assert_close(wb[i], progress_margin_weights(G[i], 0.2)[0])
    c = torch.tensor([1.0, 100.0, 0.01])
    Gc = G * c[:, None] * c[None, :]
    u = torch.einsum("bk,bkp->bp", wb, J)
    uc = torch.einsum("bk,bkp->bp", progress_margin_weights(Gc, 0.2)[0], J * c[:, None])
    torch.testing.assert_close(uc, u * 1.0, rtol=1e-8, atol=1e-10)


def test_primary_aux_progress_option_and_its_report() -> None:
    from taskgrad.methods import get
    from taskgrad.methods.auxiliary._progress import progress_margin_weights

    g = torch.Generator().manual_seed(13)
    J = torch.randn(4, 6, generator=g)
    G = J @ J.T
    m = get("primary-aux", progress=0.3)
    w = m(gram=G)
    torch.testing.assert_close(w, progress_margin_weights(G, 0.3)[0])
    torch.testing.assert_close(m.last_info["active"], w[1:] > 0)
    assert not bool(m.last_info["infeasible"])
    plain = get("primary-aux")
    torch.testing.assert_close(plain(gram=G), get("primary-aux", progress=0.0)(gram=G))
    assert plain.state_dict() == {}
    with pytest.raises(ValueError, match="one primary task"):
        get("primary-aux", progress=0.1, n_primary=2)
    with pytest.raises(ValueError, match="progress"):
        get("primary-aux", progress=-0.1)


def test_meta_updates_on_a_network_that_saves_its_weights_for_backward() -> None:
    """A tanh MLP saves its weights in the graph: the meta steps must not back-propagate through
    a graph whose parameters they changed in place (θ is restored exactly)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y, xv, yv = torch.randn(16, 4), torch.randn(16, 3), torch.randn(8, 4), torch.randn(8)

    def losses() -> torch.Tensor:
        return ((net(x) - y) ** 2).mean(0)

    def val() -> torch.Tensor:
        return ((net(xv)[:, 0] - yv) ** 2).mean()

    before = [p.detach().clone() for p in net.parameters()]
    ex = AutoLambda().update(net, losses, val, lr=0.1)
    fd = AutoLambda(hessian="finite-difference").update(net, losses, val, lr=0.1)
    torch.testing.assert_close(fd, ex, rtol=1e-4, atol=1e-9)  # central difference: O(ε²) error
    AuxiLearn().update(net, losses, val)
    m = AuxiNash(max_norm=0.0)
    J = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(L, list(net.parameters()), retain_graph=True)
                ]
            )
            for L in losses()
        ]
    )
    m(gram=J @ J.T)
    m.update(net, losses, val)
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: MetaBalance(relax_factor=1.5), "relax_factor"),
        (lambda: MetaBalance(strategy="half"), "strategy"),
        (lambda: AutoLambda(meta_lr=float("nan")), "meta_lr"),
        (lambda: AutoLambda(hessian="gauss"), "hessian"),
        (lambda: AuxiLearn(init=-1.0), "init"),
        (lambda: AuxiLearn(terms=-2), "terms"),
        (lambda: AuxiNash(min_preference=0.0), "min_preference"),
        (lambda: AuxiNash(on_undefined="ignore"), "on_undefined"),
    ],
)
def test_bad_hyper_parameters_are_named(make, needle: str) -> None:
    with pytest.raises((ValueError, TypeError), match=needle):
        make()
