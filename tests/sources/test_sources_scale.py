"""Blockwise full Gram, sketched Gram and the source objects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskgrad.models import MultiHead, resnet18_encoder
from taskgrad.sources import (
    FullGram,
    JacobianGram,
    ModuleLoss,
    RepresentationGram,
    SketchGram,
    blockwise_gram,
    make_source,
    sketch_jacobian,
)


def _direct_gram(losses, params):
    """G from k separate backwards, flattened and stacked (independent of the code under test)."""
    rows = []
    for loss in losses:
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if gi is None else gi).reshape(-1)
                    for gi, p in zip(g, params, strict=True)
                ]
            )
        )
    J = torch.stack(rows)
    return J @ J.T


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_blockwise_matches_direct_gram_resnet(norm):
    torch.manual_seed(0)
    enc = resnet18_encoder(width=2, norm=norm).double()
    model = MultiHead(enc, enc.feature_dim, 3, 2).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    z, outs = model(x)
    losses = [(o**2).mean() + i * o.mean() for i, o in enumerate(outs)]
    params = list(enc.parameters())
    G = blockwise_gram(losses, params)
    G_ref = _direct_gram(losses, params)
    torch.testing.assert_close(G, G_ref, rtol=1e-10, atol=1e-12)
    assert G.dtype == torch.float64


def test_blockwise_leaves_no_gradients_and_frees_blocks():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4)
    x = torch.randn(7, 5)
    z = lin(x)
    losses = [z[:, 0].sum(), (z**2).sum(), z[:, 1].mean()]
    G = blockwise_gram(losses, list(lin.parameters()))
    assert all(p.grad is None for p in lin.parameters())
    assert (
        not lin.weight._backward_hooks
        if hasattr(lin.weight, "_backward_hooks") and lin.weight._backward_hooks
        else True
    )
    torch.testing.assert_close(
        G, _direct_gram(losses, list(lin.parameters())), rtol=1e-5, atol=1e-5
    )
    # the hooks were removed: a plain backward afterwards gives ordinary gradients
    sum(losses).backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_sketch_jacobian_is_J_times_omega_for_a_linear_model():
    """L = A θ is linear, so the JVP columns must be exactly A Ω for the generator's Ω."""
    torch.manual_seed(1)
    A = torch.randn(4, 10, dtype=torch.float64)
    theta = torch.randn(10, dtype=torch.float64)
    fn = lambda p: A @ p["theta"]  # noqa: E731
    r = 6
    S = sketch_jacobian(
        fn, {"theta": theta}, r, generator=torch.Generator().manual_seed(3), chunk=4
    )
    g = torch.Generator().manual_seed(3)
    omega = torch.cat(
        [
            torch.randn((4, 10), generator=g, dtype=torch.float64),
            torch.randn((2, 10), generator=g, dtype=torch.float64),
        ]
    ).T
    torch.testing.assert_close(S, A @ omega)


def test_sketch_gram_converges_to_exact_gram():
    torch.manual_seed(2)
    enc = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
    model = MultiHead(enc, 8, 3, 1)
    x = torch.randn(10, 6)
    lf = lambda out: [(h**2).mean() for h in out[1]]  # noqa: E731
    z, outs = model(x)
    L = torch.stack(lf((z, outs)))
    G = JacobianGram().gram(L)
    errs = []
    for r in (4, 2048):
        src = SketchGram(r, seed=0, chunk=512)
        Gs = src.gram(L, loss_fn=ModuleLoss(model, lf, x))
        errs.append(((Gs - G).norm() / G.norm()).item())
    assert errs[1] < errs[0]
    assert errs[1] < 0.35  # relative error ~ sqrt(k/r)-scale for r = 2048


def test_sketch_state_dict_resumes_the_same_directions():
    A = torch.randn(3, 8)
    theta = torch.randn(8)
    fn = lambda p: A @ p["theta"]  # noqa: E731
    src = SketchGram(5, seed=7)
    L = A @ theta
    src.gram(None, loss_fn=fn, params={"theta": theta})
    state = src.state_dict()
    nxt = src.gram(None, loss_fn=fn, params={"theta": theta})
    other = SketchGram(5, seed=0)
    other.load_state_dict(state)
    assert torch.equal(other.gram(None, loss_fn=fn, params={"theta": theta}), nxt)
    with pytest.raises(ValueError, match="r=5"):
        SketchGram(6).load_state_dict(state)
    del L


def test_sketch_does_not_touch_batchnorm_statistics():
    torch.manual_seed(0)
    enc = resnet18_encoder(width=2)
    model = MultiHead(enc, enc.feature_dim, 2, 1)
    x = torch.randn(3, 3, 8, 8)
    lf = lambda out: [h.mean() for h in out[1]]  # noqa: E731
    before = {n: b.clone() for n, b in model.named_buffers()}
    SketchGram(3).gram(None, loss_fn=ModuleLoss(model, lf, x))
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


def test_source_errors_are_clear():
    lin = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    z = lin(x)
    head = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="features=z"):
        RepresentationGram().gram(torch.stack([head(z).mean(), z.sum()]))
    with pytest.raises(ValueError, match="not in the autograd graph"):
        RepresentationGram().gram(torch.stack([head(z).mean(), z.sum()]), features=z.detach())
    other = lin.weight.sum() * 2  # depends on parameters, not on z
    with pytest.raises(ValueError, match="do not depend on the features"):
        RepresentationGram().gram([head(z).mean(), other], features=z)
    with pytest.raises(ValueError, match="scalar"):
        FullGram().gram([z, z.sum()])
    with pytest.raises(ValueError, match="loss_fn"):
        SketchGram(2).gram(torch.stack([z.sum(), z.mean()]))
    with pytest.raises(ValueError, match="unknown source"):
        make_source("fulll", False)
