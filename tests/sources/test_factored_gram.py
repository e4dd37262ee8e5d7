"""The representation Gram from factored linear heads: an op of task i reading z (n × d) as the
left operand of a matrix product contributes D Mᵀ to ∂Lᵢ/∂z (D the gradient at its output, M its
right operand), so ⟨∂Lᵢ/∂z, ∂Lⱼ/∂z⟩ is taken from D and M without the dense rows. Checked against
per-task autograd on mixed graphs (non-linear first ops, several ops per task, biases or none,
several feature tensors, 3-D features, a consumer shared by tasks, frozen heads) and on
hypothesis draws; the update it gives against the weighted summed loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import taskgrad
from taskgrad.sources import LossSet, capture_features, representation_gram


def per_task_rows(L, feats):
    """Row i: ∂Lᵢ/∂feats flattened and concatenated (zeros where a feature is not reached)."""
    rows = []
    for loss in L:
        gs = torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(z) if g is None else g).reshape(-1)
                    for z, g in zip(feats, gs, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def build(kinds, *, n=7, d=6, dtype=torch.float64, seed=0, bias=True, frozen=False):
    """Encoder x -> z (n × d), then one loss per entry of ``kinds``:
    "lin1"/"lin3": Linear(d, 1 or 3); "tanh": a non-linear op first; "two": two Linears summed;
    "mixed": a Linear plus a non-linear op on z; "addmm": addmm with alpha=0.5, beta=2."""
    g = torch.Generator().manual_seed(seed)
    enc = nn.Linear(5, d).to(dtype)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    z = torch.tanh(enc(x))
    head_params = []
    L = []

    def lin(o):
        m = nn.Linear(d, o, bias=bias).to(dtype)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
        m.requires_grad_(not frozen)
        head_params.extend(m.parameters())
        return m

    for kind in kinds:
        if kind == "lin1":
            L.append((lin(1)(z).squeeze(-1) - 0.3).pow(2).mean())
        elif kind == "lin3":
            L.append(lin(3)(z).sin().sum())
        elif kind == "tanh":
            L.append(lin(2)(torch.tanh(z)).pow(2).mean())
        elif kind == "two":
            L.append((lin(1)(z) * lin(2)(z)).sum())
        elif kind == "mixed":
            L.append(lin(1)(z).pow(2).mean() + (z**3).mean())
        elif kind == "addmm":
            W = torch.randn(d, 2, generator=g, dtype=dtype, requires_grad=True)
            b = torch.randn(2, generator=g, dtype=dtype, requires_grad=True)
            head_params.extend([W, b])
            L.append(torch.addmm(b, z, W, beta=2.0, alpha=0.5).cos().sum())
        else:
            raise ValueError(kind)
    return z, L, [*enc.parameters()], head_params


CASES = {
    "linear heads": ["lin1"] * 4,
    "wide and narrow heads": ["lin1", "lin3", "lin1"],
    "non-linear first op": ["lin1", "tanh", "lin1", "tanh"],
    "two linears in one task": ["two", "lin1", "lin1"],
    "linear and non-linear in one task": ["mixed", "lin1", "tanh", "lin1", "lin1"],
    "addmm with alpha and beta": ["addmm", "lin1", "lin1"],
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_factored_gram_rows_and_update_equal_per_task_autograd(case, bias):
    z, L, enc, heads = build(CASES[case], bias=bias)
    J = per_task_rows(L, [z])
    cap = capture_features(LossSet(L), [z], with_heads=True)
    assert cap.factors[0], "the linear consumers of z are taken in factored form"
    G = cap.gram(torch.float64)
    torch.testing.assert_close(G, J @ J.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cap.rows[0].reshape(len(L), -1), J, rtol=1e-12, atol=1e-13)
    v = torch.linspace(0.2, 1.0, len(L), dtype=torch.float64)
    params = [*enc, *heads]
    refs = torch.autograd.grad(
        sum(w * loss for w, loss in zip(v, L, strict=True)),
        params,
        retain_graph=True,
        allow_unused=True,
    )
    got = {id(p): g for p, g, _ in cap.update(v)}
    for p, r in zip(params, refs, strict=True):
        torch.testing.assert_close(got[id(p)], r, rtol=1e-12, atol=1e-13)


def test_linear_heads_build_no_dense_rows_and_never_ask_autograd_for_z():
    z, L, _, _ = build(["lin1"] * 5)
    seen = []
    z.register_hook(lambda g: seen.append(g))
    cap = capture_features(LossSet(L), [z], with_heads=True)
    assert not seen, "the capturing backward stops at the heads: no gradient at z is formed"
    assert cap.dense[0] is None
    assert [i for i, _, _ in cap.factors[0]] == [0, 1, 2, 3, 4]
    assert all(D.shape == (7, 1) and M.shape == (6, 1) for _, D, M in cap.factors[0])


def test_wide_heads_stay_dense_where_the_factored_product_costs_more():
    # o = 3 on n = 4, d = 2: o²(n + d) = 54 > n d = 8, so the dense rows are cheaper
    z, L, _, _ = build(["lin3", "lin3"], n=4, d=2)
    cap = capture_features(LossSet(L), [z], with_heads=True)
    assert not cap.factors[0] and cap.dense[0] is not None
    J = per_task_rows(L, [z])
    torch.testing.assert_close(cap.gram(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stacked", [False, True])
def test_gram_function_without_heads_equals_per_task_autograd(stacked):
    z, L, _, _ = build(["lin1", "tanh", "two"])
    J = per_task_rows(L, [z])
    G = representation_gram(torch.stack(L) if stacked else L, z)
    torch.testing.assert_close(G, J @ J.T, rtol=1e-12, atol=1e-12)


def test_frozen_linear_heads_still_give_their_gradients():
    # the heads' matrix products have no parameter to drive them: z itself is asked for
    z, L, enc, _ = build(["lin1", "lin1", "lin3"], frozen=True)
    J = per_task_rows(L, [z])
    cap = capture_features(LossSet(L), [z], with_heads=True)
    torch.testing.assert_close(cap.gram(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)
    v = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    refs = torch.autograd.grad(
        sum(w * loss for w, loss in zip(v, L, strict=True)), enc, retain_graph=True
    )
    got = {id(p): g for p, g, _ in cap.update(v)}
    for p, r in zip(enc, refs, strict=True):
        torch.testing.assert_close(got[id(p)], r, rtol=1e-12, atol=1e-13)


def test_several_feature_tensors_and_a_3d_feature():
    torch.manual_seed(3)
    x = torch.randn(6, 4, dtype=torch.float64)
    enc = nn.Linear(4, 5).double()
    z1 = torch.tanh(enc(x))  # (6, 5)
    z2 = (
        torch.sigmoid(enc(x)).reshape(6, 1, 5).expand(6, 3, 5)
        * torch.linspace(0.5, 1.5, 3, dtype=torch.float64)[:, None]
    )
    heads1 = [nn.Linear(5, 1).double() for _ in range(3)]
    heads2 = [nn.Linear(5, 2).double() for _ in range(3)]  # on the 3-D feature (6, 3, 5)
    L = [h1(z1).pow(2).mean() + h2(z2).sin().sum() for h1, h2 in zip(heads1, heads2, strict=True)]
    J = per_task_rows(L, [z1, z2])
    cap = capture_features(LossSet(L), [z1, z2], with_heads=True)
    assert (
        cap.factors[0] and not cap.factors[1]
    )  # the 3-D feature is read through a view: dense rows
    torch.testing.assert_close(cap.gram(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)
    v = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    total = sum(w * loss for w, loss in zip(v, L, strict=True))
    refs = torch.autograd.grad(total, [*enc.parameters()], retain_graph=True)
    got = {id(p): g for p, g, _ in cap.update(v)}
    for p, r in zip(enc.parameters(), refs, strict=True):
        torch.testing.assert_close(got[id(p)], r, rtol=1e-12, atol=1e-13)
    # one op read by two tasks: the capture falls back to per-task backwards
    x = torch.randn(6, 4, dtype=torch.float64)
    z1 = torch.tanh(enc(x))
    out0 = heads1[0](z1)
    L = [out0.pow(2).mean(), out0.sum() * 0.1 + heads1[1](z1).pow(2).sum(), heads1[2](z1).sum()]
    J = per_task_rows(L, [z1])
    assert not capture_features(LossSet(L), [z1]).factors[0]
    res = taskgrad.backward(L, method=taskgrad.MGDA(), features=z1)
    torch.testing.assert_close(res.gram, J @ J.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_a_3d_feature_read_by_linear_heads_is_factored_through_the_flattening_view(bias):
    torch.manual_seed(5)
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    enc = nn.Linear(6, 8).double()
    z = torch.tanh(enc(x))  # (B, T, d) = (4, 3, 8)
    heads = [nn.Linear(8, 1, bias=bias).double() for _ in range(3)]
    other = nn.Linear(8, 8).double()
    L = [(h(z).squeeze(-1) - 0.5).pow(2).mean() for h in heads]
    L.append(other(z).flatten(0, 1).sin().sum())  # an 8-wide head: dense rows
    W = torch.randn(8, 1, dtype=torch.float64, requires_grad=True)
    zv = z.reshape(12, 8)  # a view of z read twice by one task: dense rows
    L.append((zv @ W).sum() + zv.pow(2).sum())
    J = per_task_rows(L, [z])
    cap = capture_features(LossSet(L), [z], with_heads=True)
    assert [i for i, _, _ in cap.factors[0]] == [0, 1, 2]
    torch.testing.assert_close(cap.gram(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cap.rows[0].reshape(len(L), -1), J, rtol=1e-12, atol=1e-13)
    v = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)
    total = sum(w * loss for w, loss in zip(v, L, strict=True))
    refs = torch.autograd.grad(total, [*enc.parameters()], retain_graph=True)
    got = {id(p): g for p, g, _ in cap.update(v)}
    for p, r in zip(enc.parameters(), refs, strict=True):
        torch.testing.assert_close(got[id(p)], r, rtol=1e-12, atol=1e-13)


def test_a_matrix_product_whose_right_operand_also_reads_z():
    torch.manual_seed(4)
    x = torch.randn(5, 3, dtype=torch.float64)
    enc = nn.Linear(3, 4).double()
    z = torch.tanh(enc(x))
    W = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    L = [(z @ (z.T @ z @ W)).sum(), (z @ W[:, :1]).pow(2).sum(), torch.mm(z, W).cos().sum()]
    J = per_task_rows(L, [z])
    cap = capture_features(LossSet(L), [z], with_heads=True)
    torch.testing.assert_close(cap.gram(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cap.rows[0].reshape(3, -1), J, rtol=1e-12, atol=1e-12)


def test_float32_features_give_a_float32_gram_close_to_float64():
    z, L, _, _ = build(["lin1", "tanh", "lin1"], dtype=torch.float32, n=33, d=20)
    J = per_task_rows(L, [z]).double()
    G = representation_gram(L, z)
    assert G.dtype == torch.float32
    torch.testing.assert_close(G.double(), J @ J.T, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(
        st.sampled_from(["lin1", "lin3", "tanh", "two", "mixed", "addmm"]), min_size=1, max_size=5
    ),
    n=st.integers(1, 12),
    d=st.integers(1, 9),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
    stacked=st.booleans(),
)
def test_factored_gram_equals_per_task_autograd_on_random_heads(kinds, n, d, bias, seed, stacked):
    z, L, enc, heads = build(kinds, n=n, d=d, bias=bias, seed=seed)
    J = per_task_rows(L, [z])
    cap = capture_features(LossSet(torch.stack(L) if stacked else L), [z], with_heads=True)
    scale = float((J @ J.T).abs().max()) + 1e-300
    torch.testing.assert_close(
        cap.gram(torch.float64) / scale, (J @ J.T) / scale, rtol=1e-10, atol=1e-12
    )
    v = torch.rand(len(L), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    refs = torch.autograd.grad(
        sum(w * loss for w, loss in zip(v, L, strict=True)), enc, retain_graph=True
    )
    got = {id(p): g for p, g, _ in cap.update(v)}
    for p, r in zip(enc, refs, strict=True):
        torch.testing.assert_close(got[id(p)], r, rtol=1e-10, atol=1e-12)
