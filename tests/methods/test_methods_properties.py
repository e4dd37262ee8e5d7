"""Properties the papers claim (hypothesis), stateful resume, degenerate inputs, the registry
and the unchanged ``taskgrad.backward`` training step for every registered method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taskgrad
from methods_helpers import gram, jacobian, rel
from taskgrad import methods as M

FAST = settings(max_examples=8, deadline=None)


@st.composite
def jacobians(draw, kmin=2, kmax=6, pmin=1):
    k = draw(st.integers(kmin, kmax))
    P = draw(st.integers(pmin, 8))
    seed = draw(st.integers(0, 10_000))
    J = jacobian(k, P, seed)
    scales = torch.tensor(draw(st.lists(st.floats(1e-3, 1e3), min_size=k, max_size=k)), dtype=torch.float64)
    return J * scales[:, None]


@FAST
@given(jacobians())
def test_upgrad_dualproj_mgda_never_conflict(J):
    G = gram(J)
    scale = float(torch.diagonal(G).max())
    for m in (M.UPGrad(), M.DualProj(), M.MGDA()):
        w = m(gram=G)
        assert bool(((G @ w) >= -1e-9 * scale * (1 + w.abs().sum())).all()), type(m).__name__


PERM_INVARIANT = [M.UPGrad, M.DualProj, M.IMTLG, M.AlignedMTL, M.CAGrad, M.NashMTL, M.MGDAUB]


@FAST
@given(st.integers(2, 5), st.integers(0, 10_000), st.randoms())
def test_permuting_tasks_permutes_weights(k, seed, rnd):
    J = jacobian(k, 7, seed, correlated=1.0)  # full rank, well conditioned: unique solutions
    G = gram(J)
    perm = list(range(J.shape[0]))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    for cls in PERM_INVARIANT:
        try:
            w = cls()(gram=G)
        except M.UndefinedMethodError:
            continue
        wp = cls()(gram=G[p][:, p])
        # the update d = Jᵀw is unique even where ill-conditioning leaves w sensitive
        assert rel(wp @ J[p], w @ J) < 1e-5, cls.__name__


@FAST
@given(st.integers(2, 5), st.integers(0, 10_000), st.lists(st.floats(1e-2, 1e2), min_size=5, max_size=5))
def test_imtlg_direction_is_invariant_to_loss_scales(k, seed, s):
    J = jacobian(k, 7, seed)  # well conditioned; the loss scales are the test's variable
    S = torch.tensor(s[:k], dtype=torch.float64)
    d = M.IMTLG()(gram=gram(J)) @ J
    Js = J * S[:, None]
    ds = M.IMTLG()(gram=gram(Js)) @ Js
    if d.norm() > 0 and torch.linalg.matrix_rank(J) == k:
        cos = float(torch.dot(d, ds) / (d.norm() * ds.norm()))
        assert abs(abs(cos) - 1) < 1e-6
        # equal projections on the unit gradients
        proj = (J / J.norm(dim=1, keepdim=True)) @ d
        assert float(proj.max() - proj.min()) <= 1e-6 * float(proj.abs().max())


@FAST
@given(jacobians(kmin=2, kmax=5), st.floats(1e-3, 1e3))
def test_aligned_mtl_balances_and_is_scale_invariant(J, c):
    # the aligned gradients B J have Gram λ_s·I on the range (condition number 1), and scaling
    # every loss by c leaves the weights unchanged (d scales by c)
    k = J.shape[0]
    G = gram(J)
    from taskgrad.methods.gram.aligned_mtl import aligned_mtl_balance

    B = aligned_mtl_balance(G.unsqueeze(0))[0]
    lam = torch.linalg.eigvalsh(G)
    if torch.linalg.matrix_rank(G) == k and float(lam.min()) > 1e-8 * float(lam.max()):
        assert rel(B @ G @ B.T, lam.min() * torch.eye(k, dtype=G.dtype)) < 1e-6
    assert rel(M.AlignedMTL()(gram=(c * c) * G), M.AlignedMTL()(gram=G)) < 1e-6


def test_batched_equals_per_problem():
    Gs = torch.stack([gram(jacobian(4, 6, s, correlated=1.5)) for s in range(3)])
    L = torch.rand(3, 4, dtype=torch.float64) + 0.2
    for name in ["upgrad", "dualproj", "cagrad", "imtl-g", "aligned-mtl", "nash-mtl", "fairgrad", "mgda-ub",
                 "db-mtl", "cosine-gated", "pcgrad-aux", "gradient-normalization", "stch", "generalized-mean"]:
        m = M.get(name)
        wb = m(gram=Gs, losses=L)
        for b in range(3):
            assert rel(wb[b], M.get(name)(gram=Gs[b], losses=L[b])) < 1e-8, name
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    wb = M.PCGrad(generator=g1)(gram=Gs)
    for b in range(3):
        assert rel(wb[b], M.PCGrad(generator=g2)(gram=Gs[b])) < 1e-12  # same draw order


STATEFUL = {
    "gradvac": lambda: M.GradVac(generator=torch.Generator().manual_seed(0)),
    "pcgrad": lambda: M.PCGrad(generator=torch.Generator().manual_seed(0)),
    "random": lambda: M.RandomGradient(torch.Generator().manual_seed(0)),
    "rlw": lambda: M.RLW(torch.Generator().manual_seed(0)),
    "nash-mtl": lambda: M.NashMTL(update_weights_every=3),
    "dwa": lambda: M.DWA(steps_per_epoch=2),
    "uncertainty": lambda: M.UncertaintyWeighting(lr=0.05),
    "imtl-l": lambda: M.IMTLL(lr=0.05),
    "gradnorm": lambda: M.GradNorm(lr=0.05),
    "famo": lambda: M.FAMO(),
    "initial-loss": lambda: M.InitialLossNormalization(),
    "ol-aux": lambda: M.OLAux(horizon=2),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_resume_from_state_dict_is_bit_identical(name):
    steps = [(gram(jacobian(3, 5, t, correlated=1.5)), torch.rand(3, dtype=torch.float64) + 0.2) for t in range(10)]
    full = STATEFUL[name]()
    ref = [full(gram=G, losses=L) for G, L in steps]
    first = STATEFUL[name]()
    for G, L in steps[:5]:
        first(gram=G, losses=L)
    saved = first.state_dict()
    for G, L in steps[5:7]:  # keep going: the saved state must not move
        first(gram=G, losses=L)
    resumed = STATEFUL[name]()
    if hasattr(resumed, "generator") and resumed.generator is not None:
        resumed.generator.manual_seed(12345)  # a different RNG position, restored by the state
    resumed.load_state_dict(saved)
    for (G, L), r in zip(steps[5:], ref[5:]):
        assert torch.equal(resumed(gram=G, losses=L), r)


def test_learned_parameters_move_in_the_documented_direction():
    # UW: ∂S/∂s = ½ − ½e^{-s}L < 0 for L > 1, so s grows and the weight ½e^{-s} shrinks
    m = M.UncertaintyWeighting(lr=0.1, optimizer="sgd")
    L = torch.tensor([4.0, 0.5], dtype=torch.float64)
    w0 = m(losses=L)
    w1 = m(losses=L)
    assert w1[0] < w0[0] and w1[1] > w0[1]
    # GradNorm raises the weight of the task with the smaller gradient norm
    gn = M.GradNorm(alpha=0.0, lr=0.1, optimizer="sgd")
    G = torch.diag(torch.tensor([100.0, 1.0], dtype=torch.float64))
    for _ in range(3):
        w = gn(gram=G, losses=torch.ones(2, dtype=torch.float64))
    assert w[1] > w[0] and abs(float(w.sum()) - 2) < 1e-12
    # FAMO raises the logit of the task whose loss decreased least
    f = M.FAMO(lr=0.1)
    f(losses=torch.tensor([1.0, 1.0], dtype=torch.float64))
    w = f(losses=torch.tensor([0.5, 0.99], dtype=torch.float64))
    assert w[1] * 0.99 > w[0] * 0.5  # w ∝ z/L, so z₁ > z₀


GRAM_METHODS = ["mgda", "mgda-ub", "pcgrad", "gradvac", "cagrad", "imtl-g", "aligned-mtl", "upgrad", "dualproj",
                "db-mtl", "random", "gradient-normalization", "primary-aux", "cosine-gated", "cosine-weighted",
                "pcgrad-aux", "ol-aux", "gradnorm"]


@pytest.mark.parametrize("name", GRAM_METHODS + ["nash-mtl", "fairgrad"])
def test_degenerate_inputs_give_finite_weights_or_a_clear_error(name):
    base = jacobian(1, 6, 0)[0]
    cases = {
        "identical": torch.stack([base, base, base]),
        "zero": torch.stack([base, torch.zeros(6, dtype=torch.float64), 0.5 * base + jacobian(1, 6, 1)[0]]),
        "one task": base.unsqueeze(0),
        "k=100": jacobian(100, 30, 2, correlated=0.5),
    }
    L = {n: torch.rand(J.shape[0], dtype=torch.float64) + 0.5 for n, J in cases.items()}
    for case, J in cases.items():
        try:
            w = M.get(name)(gram=gram(J), losses=L[case])
        except M.UndefinedMethodError:
            assert name in ("nash-mtl", "fairgrad") and case == "zero"
            continue
        assert w.shape == (J.shape[0],) and bool(torch.isfinite(w).all()), (name, case)


def test_registry():
    names = M.available()
    assert len(names) >= 30 and all(isinstance(v, str) and v for v in names.values())
    m = M.get("CAGrad", c=0.2)
    assert isinstance(m, M.CAGrad) and m.c == 0.2
    with pytest.raises(KeyError, match="available"):
        M.get("nope")
    with pytest.raises(TypeError, match="does not accept"):
        M.get("mean", c=1)
    with pytest.raises(ValueError, match="already registered"):
        M.register("mean", M.Mean, "dup")


@pytest.mark.parametrize("name", sorted(M.available()))
def test_every_method_runs_through_backward_unchanged(name):
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 5).double()
    heads = [torch.nn.Linear(5, 1).double() for _ in range(3)]
    x = torch.randn(16, 4, dtype=torch.float64)
    method = M.infos()[name].example(3)
    if "jacobian" in method.needs:
        pytest.skip("a Jacobian aggregator's update is not a weighted sum of the losses")
    for _ in range(2):  # two steps: stateful methods advance
        for p in [*shared.parameters(), *(q for h in heads for q in h.parameters())]:
            p.grad = None
        z = torch.tanh(shared(x))
        losses = [((h(z) - 1.0) ** 2).mean() + 0.1 for h in heads]
        res = taskgrad.backward(losses, params=list(shared.parameters()), method=method, retain_graph=True)
        got = [p.grad.clone() for p in shared.parameters()]
        for p in shared.parameters():
            p.grad = None
        sum(w * L for w, L in zip(res.weights.tolist(), losses)).backward()
        for g, p in zip(got, shared.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-10, atol=1e-12), name
