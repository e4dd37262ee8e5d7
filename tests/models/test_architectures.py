"""The multi-task architectures train through taskgrad.backward with the representation and the
full-parameter sources, and each has the structural property its paper defines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad.models import CGC, MTAN, PLE, CrossStitch, DSelectK, HardParameterSharing, MMoE, mlp
from taskgrad.models.architectures import smooth_step
from taskgrad.sources.gram import representation_gram

TASKS = ["a", "b", "c"]
D_IN, D = 8, 16


def _heads(d=D):
    return {t: nn.Linear(d, 1) for t in TASKS}


def _vector_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, D_IN, generator=g)
    A = torch.randn(D_IN, 3, generator=g)
    y = torch.tanh(x @ A) + 0.3 * torch.stack([x[:, 0] * x[:, 1], x[:, 2] ** 2, -x[:, 3]], 1)
    return x, y


def _image_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.stack([x[:, 0].mean((1, 2)), x[:, 1].abs().mean((1, 2)), x[:, 2, :4].mean((1, 2))], 1)
    return x, y


def _mtan():
    blocks = [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
    ]
    heads = {
        t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1)) for t in TASKS
    }
    return MTAN(blocks, [8, 16], heads)


def _expert():
    return mlp([D_IN, D])


MODELS = {
    "hard_sharing": (lambda: HardParameterSharing(mlp([D_IN, 32, D]), _heads()), _vector_data),
    "cross_stitch": (lambda: CrossStitch([mlp([D_IN, 32]), mlp([32, D])], _heads()), _vector_data),
    "mtan": (_mtan, _image_data),
    "mmoe": (lambda: MMoE(_expert, 4, D_IN, _heads()), _vector_data),
    "cgc": (lambda: CGC(D_IN, D, _heads(), n_shared=2, n_specific=1), _vector_data),
    "ple": (lambda: PLE([D_IN, 32, D], _heads(), n_shared=2, n_specific=1), _vector_data),
    "dselect_k": (lambda: DSelectK(_expert, 4, 2, _heads()), _vector_data),
    "dselect_k_per_example": (
        lambda: DSelectK(_expert, 5, 2, _heads(), per_example=True, gate_in=D_IN),
        _vector_data,
    ),
}


def _losses(out, y):
    return [((out[t].squeeze(-1) - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["representation", "full"])
@pytest.mark.parametrize("name", list(MODELS))
def test_trains_through_taskgrad_backward(name, source):
    make, data = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x, y = data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = last = None
    for _ in range(25):
        opt.zero_grad()
        out = model(x)
        assert out.tasks == TASKS
        losses = _losses(out, y)
        res = taskgrad.backward(
            losses,
            method=taskgrad.MGDA(),
            features=out.features if source == "representation" else None,
        )
        assert not res.skipped and torch.isfinite(res.weights).all()
        assert float(res.weights.sum()) == pytest.approx(
            1.0, abs=1e-5
        )  # MGDA: a convex combination
        total = float(sum(loss.detach() for loss in losses))
        first = total if first is None else first
        last = total
        opt.step()
    assert last < 0.7 * first, f"{name}: loss {first:.4f} → {last:.4f}"
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad}"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_loss_depends_on_the_representation(name):
    """The representation Gram is defined (every task reaches ``features``) and not diagonal."""
    make, data = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x, y = data()
    out = model(x)
    G = representation_gram(_losses(out, y), out.features)
    assert G.shape == (3, 3) and torch.all(torch.diagonal(G) > 0)
    assert G[~torch.eye(3, dtype=torch.bool)].abs().max() > 0


@pytest.mark.parametrize("name", ["mmoe", "cgc", "dselect_k"])
def test_per_task_mixtures_would_give_a_diagonal_gram(name):
    """Why gated models take the Gram at the experts: each task's mixture reaches only its own
    loss, so the Gram at the mixtures has no cross-task terms."""
    make, data = MODELS[name]
    torch.manual_seed(0)
    out = make()(data()[0])
    G = representation_gram(_losses(out, data()[1]), [out.task_features[t] for t in TASKS])
    assert torch.all(G[~torch.eye(3, dtype=torch.bool)] == 0)


def test_cross_stitch_with_identity_units_is_independent_columns():
    torch.manual_seed(0)
    model = CrossStitch([mlp([D_IN, 32]), mlp([32, D])], _heads())
    with torch.no_grad():
        model.alpha.copy_(torch.eye(3).expand_as(model.alpha))
    x, y = _vector_data()
    losses = _losses(model(x), y)
    grads = torch.autograd.grad(losses[0], list(model.columns["b"].parameters()), allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)
    init = CrossStitch([mlp([D_IN, 4])], _heads(4)).alpha[0]
    assert torch.allclose(init.sum(1), torch.ones(3)) and torch.allclose(
        torch.diagonal(init), torch.full((3,), 0.9)
    )


def test_gates_are_distributions():
    x, _ = _vector_data()
    for model in (
        MMoE(_expert, 4, D_IN, _heads()),
        DSelectK(_expert, 5, 2, _heads(), per_example=True, gate_in=D_IN),
        DSelectK(_expert, 4, 2, _heads()),
    ):
        for w in model.gate_weights(x).values():
            assert w.shape == (64, model.experts.__len__())
            assert torch.all(w >= 0) and torch.allclose(w.sum(-1), torch.ones(64), atol=1e-6)


def test_dselect_k_is_exactly_k_sparse_once_its_bits_saturate():
    model = DSelectK(_expert, 8, 2, _heads(), gamma=1.0)
    with torch.no_grad():
        for t in TASKS:  # selector 0 → code 011 = expert 3, selector 1 → code 110 = expert 6
            model.z[t].copy_(torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]]))
    w = model.gate_weights(torch.zeros(4, D_IN))["a"]
    assert torch.count_nonzero(w[0]) == 2 and w[0, 3] == w[0, 6] == 0.5
    t = torch.linspace(-1, 1, 201)
    s = smooth_step(t, 1.0)
    assert (
        torch.all(s[t <= -0.5] == 0)
        and torch.all(s[t >= 0.5] == 1)
        and torch.all(torch.diff(s) >= 0)
    )


def test_cgc_is_ple_with_one_layer_and_ple_stacks_layers():
    torch.manual_seed(0)
    cgc = CGC(D_IN, D, _heads(), n_shared=2, n_specific=1)
    torch.manual_seed(0)
    ple1 = PLE([D_IN, D], _heads(), n_shared=2, n_specific=1)
    x, _ = _vector_data()
    a, b = cgc(x), ple1(x)
    for t in TASKS:
        assert torch.equal(a[t], b[t])
    ple = PLE([D_IN, 32, D], _heads(), n_shared=2, n_specific=1)
    assert (
        len(ple.layers) == 2
        and ple.layers[0].shared_gate is not None
        and ple.layers[1].shared_gate is None
    )
    assert ple(x).features.shape == (2, 64, D)


def test_mtan_masks_the_shared_features():
    torch.manual_seed(0)
    model = _mtan()
    x, _ = _image_data()
    out = model(x)
    f = out.features
    for t in TASKS:
        a = out.task_features[t]
        assert a.shape == f.shape
        ratio = a[f > 0] / f[f > 0]
        assert torch.all((ratio > 0) & (ratio < 1))  # a sigmoid mask in (0, 1)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="heads"):
        HardParameterSharing(nn.Identity(), {})
    with pytest.raises(ValueError, match="one channel count per block"):
        MTAN([nn.Identity()], [3, 4], _heads())
    with pytest.raises(ValueError, match="gate_in"):
        DSelectK(_expert, 4, 2, _heads(), per_example=True)
    with pytest.raises(ValueError, match="n_experts"):
        MMoE(_expert, 0, D_IN, _heads())


@pytest.mark.parametrize(
    "architecture", ["shared", "cross_stitch", "mtan", "mmoe", "cgc", "ple", "dselect_k"]
)
def test_tabular_models_follow_the_benchmark_contract(architecture):
    """(features, [outputs]) with every task's loss reaching the features."""
    from taskgrad.models import tabular_multitask

    torch.manual_seed(0)
    model = tabular_multitask(architecture, D_IN, [16, 8], [1, 2])
    x, y = _vector_data()
    z, outs = model(x)
    assert [o.shape for o in outs] == [(64, 1), (64, 2)]
    losses = [
        ((outs[0].squeeze(-1) - y[:, 0]) ** 2).mean(),
        nn.functional.cross_entropy(outs[1], (y[:, 1] > 0).long()),
    ]
    G = representation_gram(losses, z)
    assert torch.all(torch.diagonal(G) > 0)
    with pytest.raises(ValueError, match="architecture must be one of"):
        tabular_multitask("moe", D_IN, [8], [1])
