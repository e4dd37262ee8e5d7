"""The Jacobian aggregators through taskgrad.backward: J over the shared parameters, the
aggregate written to them, the heads' own unweighted gradients, clipping and skipping."""

from __future__ import annotations

import pytest
import torch

import taskgrad
from taskgrad import methods as M
from taskgrad.methods.jacobian import backward_jacobian, shared_jacobian
from tests.methods.methods_helpers import rel


def model(seed: int = 0):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh()).double()
    heads = torch.nn.ModuleList([torch.nn.Linear(6, 1).double() for _ in range(3)])
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)

    def losses():
        z = trunk(x)
        return torch.stack([((h(z).squeeze(1) - y[:, i]) ** 2).mean() for i, h in enumerate(heads)])

    return trunk, heads, losses


def grads_of(mod) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in mod.parameters()])


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


AGGREGATORS = [
    lambda: M.ConFIG(),
    lambda: M.TrimmedMean(1),
    lambda: M.GradDrop(generator=torch.Generator().manual_seed(3)),
]


@pytest.mark.parametrize("make", AGGREGATORS)
def test_backward_with_a_jacobian_aggregator_matches_the_standalone_path(make):
    trunk, heads, losses = model()
    res = taskgrad.backward(losses(), method=make())
    assert res.extra["direction_norm"] > 0 and not res.skipped
    assert bool(torch.isnan(res.weights).all())
    ours_trunk, ours_heads = grads_of(trunk), grads_of(heads)
    trunk.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    shared, own = list(trunk.parameters()), list(heads.parameters())
    d = backward_jacobian(losses(), make(), shared, task_params=own)
    assert rel(ours_trunk, d) < 1e-12
    assert rel(ours_heads, grads_of(heads)) < 1e-12


def test_heads_get_their_own_unweighted_gradient_and_shared_the_aggregate():
    trunk, heads, losses = model(1)
    taskgrad.backward(losses(), method=M.ConFIG())
    L = losses()
    for i, h in enumerate(heads):
        g = torch.autograd.grad(L[i], list(h.parameters()), retain_graph=True)
        assert rel(flat(p.grad for p in h.parameters()), flat(g)) < 1e-12
    J = shared_jacobian(losses(), list(trunk.parameters()))
    assert rel(grads_of(trunk), M.ConFIG().aggregate(J)) < 1e-12


def test_max_norm_clips_and_nonfinite_losses_skip():
    trunk, _heads, losses = model(2)
    res = taskgrad.backward(losses(), method=M.TrimmedMean(1), max_norm=1e-3, clip="shared")
    assert res.clipped and float(grads_of(trunk).norm()) == pytest.approx(1e-3, rel=1e-3)
    trunk.zero_grad(set_to_none=True)
    L = losses()
    bad = torch.stack([L[0], L[1] * float("nan"), L[2]])
    with pytest.raises(FloatingPointError, match="task 1"):  # the default raises, naming the task
        taskgrad.backward(bad, method=M.ConFIG())
    res = taskgrad.backward(bad, method=M.ConFIG(), nonfinite="skip")
    assert res.skipped and "task 1" in res.reason
    assert all(p.grad is None for p in trunk.parameters())


def test_stateful_jacobian_method_over_steps_and_unsupported_options():
    trunk, heads, losses = model(3)
    m = M.MoCo()
    opt = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters()), lr=0.05)
    first = float(losses().sum().detach())
    for _ in range(20):
        opt.zero_grad()
        taskgrad.backward(losses(), method=m)
        opt.step()
    assert float(losses().sum().detach()) < first and m.state_dict()["step"] == 20
    with pytest.raises(ValueError, match="normalize"):
        taskgrad.backward(losses(), method=M.ConFIG(), normalize="sum")
    with pytest.raises(ValueError, match="does not support accumulate"):
        taskgrad.training.GradStep(M.ConFIG()).accumulate(losses())


def test_a_method_head_convention_is_the_step_default():
    class Doubled(M.Weighting):
        needs = frozenset({"losses"})

        def __init__(self, head_convention):
            self.head_convention = head_convention

        def compute(self, *, gram, losses):
            return torch.full_like(losses, 2.0)

    for convention, factor in (("unweighted", 1.0), ("weighted", 2.0), (None, 2.0)):
        _trunk, heads, losses = model(4)
        taskgrad.backward(losses(), method=Doubled(convention))
        L = losses()
        g = torch.autograd.grad(L[0], list(heads[0].parameters()))
        assert rel(flat(p.grad for p in heads[0].parameters()), factor * flat(g)) < 1e-12
    _trunk, heads, losses = model(4)
    # an explicit choice wins
    taskgrad.backward(losses(), method=Doubled("unweighted"), heads="weighted")
    g = torch.autograd.grad(losses()[0], list(heads[0].parameters()))
    assert rel(flat(p.grad for p in heads[0].parameters()), 2 * flat(g)) < 1e-12


@pytest.mark.parametrize("make", [lambda: M.FAMO(max_norm=1e-3), lambda: M.FairGrad(max_norm=1e-3)])
def test_famo_and_fairgrad_max_norm_clip_the_shared_gradient_through_the_step(make):
    trunk, heads, losses = model(5)
    res = taskgrad.backward(losses(), method=make())
    assert res.clipped
    assert float(grads_of(trunk).norm()) == pytest.approx(1e-3, rel=1e-3)
    assert float(grads_of(heads).norm()) > 1e-3  # the heads are not measured nor scaled


def test_features_are_ignored_by_jacobian_aggregators():
    """A representation-source loop (features=z) runs a Jacobian aggregator on the parameters."""
    trunk, heads, losses = model(6)
    sgd = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters()), lr=0.1)
    opt = taskgrad.training.TaskOptimizer(sgd, method=M.TrimmedMean(1), source="representation")
    x = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = trunk(x)
    L = torch.stack([(h(z).squeeze(1) ** 2).mean() for h in heads])
    res = opt.step(L, features=z)
    assert not res.skipped and res.extra["direction_norm"] > 0
