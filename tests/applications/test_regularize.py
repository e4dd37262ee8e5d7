"""Coefficient-free L2/L1 regularization: closed forms vs the general solver, the constraint, the
wrapper.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad import PrimaryAux
from taskgrad.regularize import (
    CoefficientFreeDecay,
    augment_gram,
    coefficient_free_direction,
    decay_coefficient,
    norm_constrained_backward,
)
from taskgrad.solvers import primary_aux

SHAPES = [(3, 4), (4,), (2, 2, 2), (5,)]


def _tensors(seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*s, generator=g, dtype=torch.float64) for s in SHAPES]


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _aux(p: torch.Tensor, norm: str) -> torch.Tensor:
    return p if norm == "l2" else torch.sign(p)


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("seed", range(6))
def test_global_closed_form_matches_primary_aux(norm: str, seed: int) -> None:
    grads, params = _tensors(seed), _tensors(100 + seed)
    if norm == "l1":
        params[1][0] = 0.0  # an exact zero: sign(0) = 0
    u, lam = coefficient_free_direction(grads, params, norm)
    g, a = _flat(grads), _flat([_aux(p, norm) for p in params])
    J = torch.stack([g, a])
    w = primary_aux(J @ J.T, eps=0.0)
    assert torch.allclose(_flat(u), J.T @ w, atol=1e-12, rtol=1e-10)
    assert torch.allclose(lam[0], w[1], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_per_group_closed_form_matches_batched_primary_aux(norm: str) -> None:
    grads, params = _tensors(7), _tensors(8)
    groups = [[0, 2], [1], [3]]
    u, lam = coefficient_free_direction(grads, params, norm, groups)
    Gs = []
    for grp in groups:
        J = torch.stack(
            [_flat([grads[i] for i in grp]), _flat([_aux(params[i], norm) for i in grp])]
        )
        Gs.append(J @ J.T)
    w = primary_aux(torch.stack(Gs), eps=0.0)  # batched over the groups
    assert torch.allclose(lam, w[:, 1], atol=1e-12, rtol=1e-10)
    for j, grp in enumerate(groups):
        for i in grp:
            assert torch.allclose(u[i], grads[i] + w[j, 1] * _aux(params[i], norm), atol=1e-12)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(st.tuples(finite, finite), min_size=1, max_size=12),
    norm=st.sampled_from(["l2", "l1"]),
    split=st.integers(1, 11),
)
def test_constraint_never_violated(data, norm, split) -> None:
    g = torch.tensor([d[0] for d in data], dtype=torch.float64)
    p = torch.tensor([d[1] for d in data], dtype=torch.float64)
    k = min(split, len(data))
    grads, params = [g[:k], g[k:]], [p[:k], p[k:]]
    for groups in (None, [[0], [1]]):
        u, lam = coefficient_free_direction(grads, params, norm, groups)
        units = [[0, 1]] if groups is None else groups
        assert bool(torch.isfinite(lam).all()) and bool((lam >= 0).all())
        for unit in units:
            uu = _flat([u[i] for i in unit])
            gg = _flat([grads[i] for i in unit])
            aa = _flat([_aux(params[i], norm) for i in unit])
            tol = 1e-12 * (1 + gg.norm() * aa.norm())
            assert float(uu @ aa) >= -tol  # R does not increase to first order
            assert float(uu.norm()) <= float(gg.norm()) * (1 + 1e-12) + 1e-300  # a projection
            if float(gg @ aa) > tol:
                assert torch.equal(uu, gg)  # inactive constraint: u = g exactly


def test_zero_weights_and_l1_zero_coordinates() -> None:
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([3.0])]
    params = [torch.zeros(2), torch.tensor([0.5])]
    u, lam = coefficient_free_direction(grads, params, "l2", [[0], [1]])
    assert lam[0] == 0 and torch.equal(u[0], grads[0])  # θ = 0: nothing to constrain, no NaN
    u1, _ = coefficient_free_direction(
        [torch.tensor([-1.0, 5.0, -2.0])], [torch.tensor([2.0, 0.0, 1.0])], "l1"
    )
    assert u1[0][1] == 5.0  # sign(0) = 0: a zero coordinate is not moved by the projection
    assert float(u1[0] @ torch.tensor([1.0, 0.0, 1.0])) >= -1e-7
    assert decay_coefficient(torch.tensor([-1.0]), torch.tensor([0.0])).item() == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="norm"):
        coefficient_free_direction([torch.ones(2)], [torch.ones(2)], "l3")
    with pytest.raises(ValueError, match="shape"):
        coefficient_free_direction([torch.ones(3)], [torch.ones(2)])
    with pytest.raises(ValueError, match="disjoint"):
        coefficient_free_direction([torch.ones(2)] * 2, [torch.ones(2)] * 2, groups=[[0, 1], [1]])
    with pytest.raises(FloatingPointError):
        decay_coefficient(torch.tensor([float("nan")]), torch.tensor([1.0]))


# ---- the optimizer wrapper ------------------------------------------------------------------


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _loss(model: torch.nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = 5 * torch.randn(
        16, 3, generator=g, dtype=torch.float64
    )  # far targets: weights want to grow
    return (model(x) - y).pow(2).mean()


@pytest.mark.parametrize("where", ["update", "gradient"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_plain_sgd_is_the_closed_form(where: str, norm: str) -> None:
    model = _model()
    lr = 0.05
    opt = CoefficientFreeDecay(torch.optim.SGD(model.parameters(), lr=lr), norm=norm, where=where)
    for step in range(5):
        params = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        _loss(model, step).backward()
        u, _ = coefficient_free_direction(
            [p.grad.clone() for p in model.parameters()], params, norm
        )
        opt.step()
        for p, p0, ui in zip(model.parameters(), params, u, strict=True):
            assert torch.allclose(p.detach(), p0 - lr * ui, atol=1e-12)


@pytest.mark.parametrize("inner", ["sgd_momentum", "adam", "adamw"])
@pytest.mark.parametrize("scope", ["global", "group", "tensor"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_update_never_increases_norm_to_first_order(inner: str, scope: str, norm: str) -> None:
    model = _model(1)
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    b = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups = [{"params": w}, {"params": b}]
    base = {
        "sgd_momentum": lambda: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
        "adam": lambda: torch.optim.Adam(groups, lr=0.05),
        "adamw": lambda: torch.optim.AdamW(groups, lr=0.05, weight_decay=0.0),
    }[inner]()
    opt = CoefficientFreeDecay(base, norm=norm, scope=scope)
    units = {"global": [w + b], "group": [w, b], "tensor": [[p] for p in w + b]}[scope]
    active = 0
    for step in range(12):
        old = [[p.detach().clone() for p in unit] for unit in units]
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        active += int(bool((opt.last_lambda > 0).any()))
        for unit, olds in zip(units, old, strict=True):
            delta = _flat([p.detach() - o for p, o in zip(unit, olds, strict=True)])
            a = _flat([_aux(o, norm) for o in olds])
            assert float(delta @ a) <= 1e-10 * (1 + delta.norm() * a.norm())
            if norm == "l2":  # ‖θ+Δ‖² − ‖θ‖² = 2⟨Δ,θ⟩ + ‖Δ‖² ≤ ‖Δ‖²
                o = _flat(olds)
                grow = float(_flat(list(unit)).detach().pow(2).sum() - o.pow(2).sum())
                assert grow <= float(delta.pow(2).sum()) + 1e-10
    assert active > 0  # the test problem does exercise the constraint


def test_adam_moments_see_the_raw_gradient() -> None:
    torch.manual_seed(2)
    theta = torch.nn.Parameter(torch.randn(10, dtype=torch.float64))
    opt = CoefficientFreeDecay(torch.optim.Adam([theta], lr=0.1, betas=(0.9, 0.999)))
    opt.zero_grad()
    (-(theta * theta.detach()).sum()).backward()  # g = −θ: Adam's step points outwards
    raw = theta.grad.clone()
    opt.step()
    assert opt.last_lambda.item() > 0  # the projection acted on the update …
    assert torch.allclose(
        opt.state[theta]["exp_avg"], 0.1 * raw, atol=1e-14
    )  # … not on m = (1 − β₁)·g


def test_excluded_group_is_untouched() -> None:
    model = _model(3)
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    b = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups = [{"params": w}, {"params": b, "coefficient_free": False}]
    opt = CoefficientFreeDecay(torch.optim.SGD(groups, lr=0.1))
    twin = _model(3)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    for step in range(3):
        for o, m in ((opt, model), (twin_opt, twin)):
            o.zero_grad()
            _loss(m, step).backward()
        bias_grads = [p.grad.clone() for p in b]
        before = [p.detach().clone() for p in b]
        opt.step()
        for p, p0, g in zip(b, before, bias_grads, strict=True):
            assert torch.allclose(p.detach(), p0 - 0.1 * g, atol=1e-14)
        twin_opt.step()


def test_state_dict_round_trip() -> None:
    a = _model(4)
    opt_a = CoefficientFreeDecay(
        torch.optim.Adam(a.parameters(), lr=0.05), norm="l1", scope="tensor"
    )
    for step in range(3):
        opt_a.zero_grad()
        _loss(a, step).backward()
        opt_a.step()
    b = copy.deepcopy(a)
    opt_b = CoefficientFreeDecay(
        torch.optim.Adam(b.parameters(), lr=0.05), norm="l1", scope="tensor"
    )
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert (opt_b.n_steps, opt_b.n_active) == (opt_a.n_steps, opt_a.n_active)
    for step in range(3, 6):
        for o, m in ((opt_a, a), (opt_b, b)):
            o.zero_grad()
            _loss(m, step).backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    wrong = CoefficientFreeDecay(
        torch.optim.Adam(b.parameters(), lr=0.05), norm="l2", scope="tensor"
    )
    with pytest.raises(ValueError, match="norm"):
        wrong.load_state_dict(opt_a.state_dict())


def test_wrapper_bad_arguments() -> None:
    model = _model()
    with pytest.raises(TypeError):
        CoefficientFreeDecay(model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        CoefficientFreeDecay(torch.optim.SGD(model.parameters(), lr=0.1), scope="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="where"):
        CoefficientFreeDecay(torch.optim.SGD(model.parameters(), lr=0.1), where="moments")  # type: ignore[arg-type]


# ---- composition: the norm as one more auxiliary in the Gram ----------------------------------


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_norm_as_extra_auxiliary_in_the_gram(norm: str) -> None:
    torch.manual_seed(5)
    enc = torch.nn.Linear(5, 4).double()
    heads = [torch.nn.Linear(4, 1).double() for _ in range(3)]
    x = torch.randn(20, 5, dtype=torch.float64)
    ys = [3 * torch.randn(20, 1, dtype=torch.float64) for _ in range(3)]

    def losses():
        z = torch.tanh(enc(x))
        return [(h(z) - y).pow(2).mean() for h, y in zip(heads, ys, strict=True)]

    params = list(enc.parameters())
    # independent reference: explicit Jacobian rows, augmented with the auxiliary gradient a
    J = torch.stack([_flat(torch.autograd.grad(L, params, retain_graph=True)) for L in losses()])
    a = _flat([_aux(p.detach(), norm) for p in params])
    Jp = torch.cat([J, a[None]])
    res = norm_constrained_backward(losses(), params, PrimaryAux(n_primary=1), norm)
    assert torch.allclose(res.gram, Jp @ Jp.T, atol=1e-10)
    assert torch.allclose(augment_gram(J @ J.T, J @ a, a @ a), Jp @ Jp.T, atol=1e-12)
    w = primary_aux(Jp @ Jp.T)
    assert torch.allclose(res.weights, w, atol=1e-10)
    u = _flat([p.grad for p in params])
    assert torch.allclose(u, Jp.T @ w, atol=1e-10)
    for row in Jp[1:]:  # auxiliaries (task 1, task 2 and the norm) do not increase
        assert float(u @ row) >= -1e-9 * (1 + u.norm() * row.norm())
    for h in heads:  # heads receive Σ wᵢ ∇Lᵢ as a weighted backward would
        assert h.weight.grad is not None
    with pytest.raises(ValueError, match="shapes"):
        augment_gram(torch.eye(2), torch.ones(3), torch.tensor(1.0))
