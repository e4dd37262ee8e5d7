"""NewtonCG / GaussNewtonCG: exact steps on quadratics, the LM ratio against an independent
recomputation, the reported fall-backs (negative curvature, non-finite products, CG cap), the
method's weights, forward vs reverse products, and checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

from taskgrad import Mean, PrimaryAux
from taskgrad.second_order import GaussNewtonCG, NewtonCG
from taskgrad.second_order._flat import flatten, unflatten
from taskgrad.sources import parameter_gram

from .conftest import TwoTaskMLP, task_losses


def spd(n: int, cond: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=torch.float64)) @ Q.T


class Quadratics(nn.Module):
    """k = 2 quadratic tasks Lᵢ(θ) = ½θᵀAᵢθ − bᵢᵀθ on one shared parameter vector."""

    def __init__(self, A1, A2, b1, b2, theta0) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())
        self.A, self.b = (A1, A2), (b1, b2)

    def forward(self) -> torch.Tensor:
        t = self.theta
        return torch.stack([0.5 * t @ A @ t - b @ t for A, b in zip(self.A, self.b, strict=True)])


def quad(n=6, cond=1e3):
    g = torch.Generator().manual_seed(3)
    A1, A2 = spd(n, cond, 1), spd(n, 10.0, 2)
    b1, b2 = (
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.randn(n, generator=g, dtype=torch.float64),
    )
    return Quadratics(A1, A2, b1, b2, torch.randn(n, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("products", ["reverse", "forward"])
def test_newton_cg_one_step_on_quadratic(products):
    m = quad()
    opt = NewtonCG(m.parameters(), Mean(), damping=0.0, min_damping=0.0, cg_rtol=1e-12,
                   max_cg_iters=50, module=m, products=products)  # fmt: skip
    opt.step(m)
    A = 0.5 * (m.A[0] + m.A[1])
    b = 0.5 * (m.b[0] + m.b[1])
    torch.testing.assert_close(m.theta.detach(), torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)
    info = opt.info
    assert info["products"] == products and info["cg_status"] == "converged"
    assert info["step_size"] == 1.0 and info["fallback"] is None
    # the quadratic model is exact: actual decrease / predicted decrease = 1
    assert info["rho"] == pytest.approx(1.0, abs=1e-8)


def test_gauss_newton_cg_one_step_on_weighted_least_squares():
    torch.manual_seed(0)
    X1, X2 = torch.randn(12, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    y1, y2 = torch.randn(12, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)

    class Fixed(Mean):
        def compute(self, *, gram, losses):
            return w.clone()

    def closure():
        z1, z2 = X1 @ theta, X2 @ theta
        return {
            "losses": torch.stack([((z1 - y1) ** 2).mean(), ((z2 - y2) ** 2).mean()]),
            "outputs": [z1, z2],
        }

    opt = GaussNewtonCG([theta], Fixed(), damping=0.0, min_damping=0.0, cg_rtol=1e-12)
    opt.step(closure)
    # normal equations of Σ wᵢ mean((Xᵢθ − yᵢ)²)
    A = w[0] * X1.T @ X1 / 12 + w[1] * X2.T @ X2 / 9
    b = w[0] * X1.T @ y1 / 12 + w[1] * X2.T @ y2 / 9
    torch.testing.assert_close(theta.detach(), torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)
    assert opt.info["kind"] == "gauss-newton" and opt.info["products"] == "reverse"


def mlp_setup(seed=0):
    torch.manual_seed(seed)
    model = TwoTaskMLP(seed=seed)
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, dtype=torch.float64)
    c = torch.randint(0, 3, (16,))

    def closure():
        z = model(x)
        return {"losses": task_losses(z, y, c), "outputs": list(z)}

    return model, closure, (x, y, c)


def test_rho_and_damping_rule_match_independent_recomputation():
    """ρ = (f(θ₁) − f(θ₀)) / (gᵀs + ½sᵀHs), s = θ₁ − θ₀, with H the explicit Hessian."""
    model, closure, (x, y, c) = mlp_setup()
    names = [n for n, _ in model.named_parameters()]
    like = [p.detach().clone() for p in model.parameters()]
    opt = NewtonCG(model.parameters(), Mean(), damping=0.1)
    seen = set()
    for _ in range(4):
        theta0 = flatten([p.detach() for p in model.parameters()]).clone()
        opt.step(lambda: closure()["losses"])
        info = opt.info
        w = info["weights"]
        theta1 = flatten([p.detach() for p in model.parameters()])
        s = theta1 - theta0

        def f_of(t, w=w):
            z = torch.func.functional_call(
                model, dict(zip(names, unflatten(t, like), strict=True)), (x,)
            )
            return (w * task_losses(z, y, c)).sum()

        g = torch.func.grad(f_of)(theta0)
        H = hessian(f_of, theta0)
        pred = float(g @ s + 0.5 * s @ H @ s)
        actual = float(f_of(theta1) - f_of(theta0))
        assert actual < 0  # Armijo: every accepted step decreases f
        assert info["rho"] == pytest.approx(actual / pred, rel=1e-6)
        lam, nxt = info["damping"], info["next_damping"]
        if info["rho"] < 0.25:
            want, tag = lam * 1.5, "up"
        elif info["rho"] > 0.75:
            want, tag = lam * 2 / 3, "down"
        else:
            want, tag = lam, "same"
        if info["negative_curvature"]:  # raised past the curvature CG met: (λ − c)·1.5
            want, tag = max(want, (lam - info["cg_curvature"]) * 1.5), "negative curvature"
        assert nxt == pytest.approx(want)
        seen.add(tag)
    assert seen  # the rule was exercised


class Indefinite(nn.Module):
    """f(θ) = ½(θ₀² − θ₁²) + θ₀θ₁/10: a saddle."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.1, 1.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        t = self.theta
        return torch.stack([0.5 * (t[0] ** 2 - t[1] ** 2) + 0.1 * t[0] * t[1]])


def test_negative_curvature_falls_back_along_gradient_and_reports():
    m = Indefinite()
    t0 = m.theta.detach().clone()
    g0 = torch.func.grad(lambda t: 0.5 * (t[0] ** 2 - t[1] ** 2) + 0.1 * t[0] * t[1])(t0)
    opt = NewtonCG(m.parameters(), damping=1e-6)
    L0 = opt.step(m)
    info = opt.info
    assert info["negative_curvature"] and info["fallback"] == "gradient"
    assert info["fallback_reason"] == "negative_curvature"
    s = m.theta.detach() - t0
    # the step is a positive multiple of −g
    cos = float(-(s @ g0) / (s.norm() * g0.norm()))
    assert cos == pytest.approx(1.0, abs=1e-12)
    assert info["objective_after"] < float(L0.sum())


class Kink(nn.Module):
    """L₁ = Σ|θ|^1.5 has a finite gradient but an infinite second derivative at θ₀ = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        t = self.theta
        return torch.stack([t.abs().pow(1.5).sum(), (t[1] - 3.0) ** 2])


def test_nonfinite_product_is_reported_and_no_nan_reaches_the_parameters():
    m = Kink()
    opt = NewtonCG(m.parameters())
    opt.step(m)
    info = opt.info
    assert info["nonfinite_product"] and info["cg_status"] == "nonfinite"
    assert info["fallback"] == "gradient" and info["fallback_reason"] == "nonfinite"
    assert bool(torch.isfinite(m.theta).all())
    assert info["objective_after"] < info["objective"]


def test_cg_iteration_cap_keeps_a_descent_step_and_reports():
    m = quad(n=8, cond=1e6)
    opt = NewtonCG(m.parameters(), damping=0.0, min_damping=0.0, max_cg_iters=2, cg_rtol=1e-12)
    opt.step(m)
    info = opt.info
    assert info["cg_status"] == "max_iter" and info["cg_iterations"] == 2
    assert info["fallback"] is None and info["objective_after"] < info["objective"]


def test_nonfinite_loss_raises_or_skips():
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))

    def closure():
        return torch.stack([(theta**2).sum(), (theta * float("nan")).sum()])

    with pytest.raises(FloatingPointError, match="not finite"):
        NewtonCG([theta]).step(closure)
    opt = NewtonCG([theta], nonfinite="skip")
    opt.step(closure)
    assert opt.info["skipped"] and theta.detach().tolist() == [1.0, 2.0]


def test_weights_come_from_the_method_on_the_parameter_gram():
    model, _, (x, y, c) = mlp_setup(seed=1)

    def closure():  # separate scalars: the optimizer can tell the shared (encoder) parameters
        z = model(x)
        return [((z[0] - y) ** 2).mean(), nn.functional.cross_entropy(z[1], c)]

    shared = list(model.enc.parameters())  # the only parameters both heads read
    L = torch.stack(closure())
    want = PrimaryAux(n_primary=1)(gram=parameter_gram(L, shared), losses=L.detach())
    opt = NewtonCG(model.parameters(), PrimaryAux(n_primary=1))
    opt.step(closure)
    torch.testing.assert_close(opt.info["weights"], want)
    # an explicit gram_params wins: the Gram over all parameters gives other weights here
    everything = list(model.parameters())
    L = torch.stack(closure())
    want_all = PrimaryAux(n_primary=1)(gram=parameter_gram(L, everything), losses=L.detach())
    opt_all = NewtonCG(model.parameters(), PrimaryAux(n_primary=1), gram_params=everything)
    opt_all.step(closure)
    torch.testing.assert_close(opt_all.info["weights"], want_all)


@pytest.mark.parametrize("cls", [NewtonCG, GaussNewtonCG])
def test_forward_and_reverse_products_give_the_same_step(cls):
    steps = []
    for products in ("forward", "reverse"):
        model, closure, _ = mlp_setup(seed=2)
        # damping keeps the system well conditioned so that CG converges (rounding aside)
        opt = cls(
            model.parameters(), Mean(), module=model, products=products, cg_rtol=1e-10, damping=5.0
        )
        for _ in range(2):
            opt.step(closure)
            assert opt.info["cg_status"] == "converged"
        assert opt.info["products"] == products
        steps.append(flatten([p.detach() for p in model.parameters()]))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-8, atol=1e-10)


def test_forward_products_refuse_a_closure_that_reads_parameters_outside_the_module():
    model, closure, _ = mlp_setup(seed=3)
    captured = list(model.parameters())

    def closure_with_l2():  # the L2 term reads the captured tensors, not the module's forward
        out = closure()
        reg = 1e-2 * sum((p**2).sum() for p in captured)
        return {"losses": out["losses"] + reg, "outputs": out["outputs"]}

    with pytest.raises(RuntimeError, match="functional gradient differs"):
        NewtonCG(model.parameters(), module=model, products="forward").step(closure_with_l2)
    before = flatten([p.detach() for p in model.parameters()]).clone()
    opt = NewtonCG(model.parameters(), module=model)  # auto: double backward, exact here
    opt.step(closure_with_l2)
    assert opt.info["products"] == "reverse" and "products_fallback" not in opt.info
    assert opt.info["objective_after"] < opt.info["objective"]
    assert not torch.equal(before, flatten([p.detach() for p in model.parameters()]))


def test_gauss_newton_needs_outputs():
    model, closure, _ = mlp_setup()
    with pytest.raises(ValueError, match="outputs"):
        GaussNewtonCG(model.parameters()).step(lambda: closure()["losses"])


def test_hutchinson_preconditioner_makes_cg_exact_on_a_diagonal_quadratic():
    scales = torch.logspace(-3, 3, 7, dtype=torch.float64)
    theta = nn.Parameter(torch.ones(7, dtype=torch.float64))

    def closure():
        return torch.stack([0.5 * (scales * theta**2).sum() - theta.sum()])

    plain = NewtonCG([theta], damping=1e-3, cg_rtol=1e-10)
    plain.step(closure)
    n_plain = plain.info["cg_iterations"]
    with torch.no_grad():
        theta.fill_(1.0)
    pre = NewtonCG([theta], damping=1e-3, cg_rtol=1e-10, preconditioner="hutchinson")
    pre.step(closure)
    assert pre.info["preconditioner"] == "hutchinson"
    assert pre.info["cg_iterations"] == 1 < n_plain


def test_state_dict_round_trip_continues_identically():
    model, closure, _ = mlp_setup(seed=4)
    opt = NewtonCG(model.parameters(), PrimaryAux(), damping=0.5, preconditioner="hutchinson")
    for _ in range(3):
        opt.step(lambda: closure()["losses"])
    saved_params = [p.detach().clone() for p in model.parameters()]
    saved = copy.deepcopy(opt.state_dict())  # torch.optim state dicts share their state
    opt.step(lambda: closure()["losses"])
    after_a = flatten([p.detach() for p in model.parameters()]).clone()
    damping_a = opt.info["next_damping"]

    with torch.no_grad():
        for p, v in zip(model.parameters(), saved_params, strict=True):
            p.copy_(v)
    opt_b = NewtonCG(model.parameters(), PrimaryAux(), damping=123.0, preconditioner="hutchinson")
    opt_b.load_state_dict(saved)
    opt_b.step(lambda: closure()["losses"])
    torch.testing.assert_close(
        flatten([p.detach() for p in model.parameters()]), after_a, rtol=0, atol=0
    )
    assert opt_b.info["next_damping"] == damping_a
    assert opt_b.info["damping"] != 123.0


def test_constructor_rejects_bad_settings():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="damping_increase"):
        NewtonCG([p], damping_increase=0.5)
    with pytest.raises(ValueError, match="module"):
        NewtonCG([p], products="forward")
    with pytest.raises(ValueError, match="not parameters of module"):
        NewtonCG([p], module=nn.Linear(2, 2))


def test_gram_fn_is_used_and_checked():
    model, closure, _ = mlp_setup(seed=5)
    G = torch.tensor([[1.0, -0.9], [-0.9, 1.0]], dtype=torch.float64)
    calls = []

    def gram_fn(L):
        calls.append(L.shape)
        return G

    opt = NewtonCG(model.parameters(), PrimaryAux(), gram_fn=gram_fn)
    opt.step(lambda: closure()["losses"])
    assert calls == [torch.Size([2])]
    torch.testing.assert_close(
        opt.info["weights"], PrimaryAux()(gram=G, losses=torch.ones(2, dtype=torch.float64))
    )
    bad = NewtonCG(
        model.parameters(), PrimaryAux(), gram_fn=lambda L: torch.eye(3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="gram_fn must return"):
        bad.step(lambda: closure()["losses"])


def test_truncate_keeps_the_cg_iterate_and_damping_rises_past_the_negative_curvature():
    """f = ½θᵀAθ − bᵀθ with A = diag(1, 4, −2): CG takes a positive-curvature step first."""
    A = torch.diag(torch.tensor([1.0, 4.0, -2.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 0.05], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def closure():
        return torch.stack([0.5 * theta @ A @ theta - b @ theta])

    opt = NewtonCG([theta], damping=1e-3, negative_curvature="truncate", cg_rtol=1e-12)
    opt.step(closure)
    info = opt.info
    assert info["negative_curvature"] and info["fallback"] is None and info["cg_iterations"] >= 2
    assert info["objective_after"] < info["objective"]
    # the damping now exceeds the most negative curvature seen (−2 + λ)
    assert info["next_damping"] > 2.0 - 1e-3
