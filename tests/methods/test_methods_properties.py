"""Method-specific properties (the generic ones, driven by each method's MethodInfo, are in
test_methods_registry.py) and the unchanged ``taskgrad.backward`` training step for every
registered method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taskgrad
from taskgrad import methods as M
from tests.methods.methods_helpers import gram, jacobian, rel

FAST = settings(max_examples=8, deadline=None)


@st.composite
def jacobians(draw, kmin=2, kmax=6, pmin=1):
    k = draw(st.integers(kmin, kmax))
    P = draw(st.integers(pmin, 8))
    seed = draw(st.integers(0, 10_000))
    J = jacobian(k, P, seed)
    scales = torch.tensor(
        draw(st.lists(st.floats(1e-3, 1e3), min_size=k, max_size=k)), dtype=torch.float64
    )
    return J * scales[:, None]


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


def test_pcgrad_batched_draws_in_problem_order():
    Gs = torch.stack([gram(jacobian(4, 6, s, correlated=1.5)) for s in range(3)])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    wb = M.PCGrad(generator=g1)(gram=Gs)
    for b in range(3):
        assert rel(wb[b], M.PCGrad(generator=g2)(gram=Gs[b])) < 1e-12  # same draw order


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
        res = taskgrad.backward(
            losses, params=list(shared.parameters()), method=method, retain_graph=True
        )
        got = [p.grad.clone() for p in shared.parameters()]
        for p in shared.parameters():
            p.grad = None
        sum(w * L for w, L in zip(res.weights.tolist(), losses, strict=True)).backward()
        for g, p in zip(got, shared.parameters(), strict=True):
            assert torch.allclose(g, p.grad, rtol=1e-10, atol=1e-12), name
