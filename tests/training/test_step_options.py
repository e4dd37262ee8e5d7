"""Step options on every entry point: the undefined-method policy, the head-gradient convention,
``max_norm`` clipping with its scope, ``normalize`` and what a skipped step reports."""

from __future__ import annotations

import math

import pytest
import torch

import taskgrad
from taskgrad.distributed import DistributedStep
from taskgrad.methods import UndefinedMethodError
from taskgrad.training import GradStep, TaskOptimizer

from .test_one_path import Net, batch, grads, per_task_jacobian, shared

ENTRY_POINTS = ["backward", "gradstep", "taskoptimizer", "distributed"]


class Undefined(taskgrad.Weighting):
    """A method that is undefined for every Gram (as Nash-MTL is with 0 in the convex hull)."""

    def compute(self, *, gram, losses):
        raise UndefinedMethodError("0 lies in the convex hull of the task gradients")


class ClipsInStep(taskgrad.MGDA):
    """MGDA carrying a max_norm the step is to apply (as FairGrad's and FAMO's)."""

    def __init__(self, max_norm):
        super().__init__()
        self.max_norm = max_norm


def run(entry, model, L, z, method, source="full", **kw):
    feats = z if source == "representation" else None
    if entry == "backward":
        return taskgrad.backward(L, method=method, features=feats, source=source, **kw), None
    if entry == "gradstep":
        step = GradStep(method, source, **kw)
        return step.backward(L, features=feats), step
    if entry == "taskoptimizer":
        opt = TaskOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), method=method, source=source, **kw
        )
        return opt.step(L, features=feats), opt
    step = DistributedStep(method, source, **kw)
    return step.backward(L, features=feats), step


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_undefined_skip_fallback_and_raise_on_every_entry_point(entry):
    x, y = batch()
    model = Net()
    z, L = model(x, y)
    res, obj = run(entry, model, L, z, Undefined())  # the default: skip
    assert res.skipped and "undefined" in res.reason and "convex hull" in res.reason
    assert all(p.grad is None for p in model.parameters())
    if obj is not None:
        assert obj.n_skipped == 1
    model = Net()
    z, L = model(x, y)
    with pytest.raises(UndefinedMethodError):
        run(entry, model, L, z, Undefined(), on_undefined="raise")
    model = Net()
    z, L = model(x, y)
    res, obj = run(entry, model, L, z, Undefined(), on_undefined=taskgrad.MGDA())
    assert not res.skipped and res.fallback == "MGDA" and "undefined" in res.reason
    if obj is not None:
        assert (
            getattr(obj, "n_fallback", getattr(getattr(obj, "gradstep", None), "n_fallback", None))
            == 1
        )
    got = grads(model)
    ref = Net()
    z, L = ref(x, y)
    taskgrad.backward(L, method=taskgrad.MGDA())
    for a, b in zip(got, grads(ref), strict=True):
        assert torch.equal(a, b)


def test_other_method_errors_are_not_swallowed():
    class Broken(taskgrad.Weighting):
        def compute(self, *, gram, losses):
            raise RuntimeError("a bug")

    x, y = batch()
    z, L = Net()(x, y)
    with pytest.raises(RuntimeError, match="a bug"):
        taskgrad.backward(L, method=Broken())


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="on_undefined"):
        GradStep(on_undefined="ignore")
    with pytest.raises(ValueError, match="heads"):
        GradStep(heads="none")
    with pytest.raises(ValueError, match="max_norm"):
        GradStep(max_norm=float("nan"))
    with pytest.raises(ValueError, match="clip"):
        GradStep(max_norm=1.0, clip="heads")
    with pytest.raises(ValueError, match="normalize"):
        GradStep(normalize="l2")


@pytest.mark.parametrize("source", ["full", "representation", "jacobian"])
def test_unweighted_heads_get_their_own_gradient_and_shared_the_weighted_one(source):
    x, y = batch()
    model = Net()
    z, L = model(x, y)
    res = taskgrad.backward(
        L,
        method=taskgrad.MGDA(),
        features=z if source == "representation" else None,
        source=source,
        heads="unweighted",
    )
    w = res.weights
    ref = Net()
    z, L = ref(x, y)
    for p, q in zip(shared(model), shared(ref), strict=True):
        g = sum(
            wi * gi
            for wi, gi in zip(
                w, (torch.autograd.grad(li, q, retain_graph=True)[0] for li in L), strict=True
            )
        )
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    for i, head in enumerate(model.heads):
        own = torch.autograd.grad(L[i], list(ref.heads[i].parameters()), retain_graph=True)
        for p, g in zip(head.parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(w, torch.ones_like(w))


@pytest.mark.parametrize("source", ["full", "representation"])
@pytest.mark.parametrize("scope", ["all", "shared"])
def test_max_norm_clips_the_step_with_its_scope(source, scope):
    x, y = batch()
    model = Net()
    for p in model.parameters():
        p.grad = torch.ones_like(
            p
        )  # what .grad held before the step is kept apart from the clipping
    z, L = model(x, y)
    res = taskgrad.backward(
        L,
        method=taskgrad.Mean(),
        features=z if source == "representation" else None,
        source=source,
        max_norm=1e-3,
        clip=scope,
    )
    step_grads = {id(p): p.grad - 1 for p in model.parameters()}
    ids = {id(p) for p in shared(model)}
    measured = [g for i, g in step_grads.items() if scope == "all" or i in ids]
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in measured))
    assert res.clipped and res.grad_norm > 1e-3
    assert norm == pytest.approx(1e-3, rel=1e-4)
    if scope == "shared":  # the heads keep their unclipped gradient
        ref = Net()
        z, L = ref(x, y)
        taskgrad.backward(L, method=taskgrad.Mean())
        for h, hr in zip(model.heads, ref.heads, strict=True):
            for p, q in zip(h.parameters(), hr.parameters(), strict=True):
                torch.testing.assert_close(p.grad - 1, q.grad, rtol=1e-10, atol=1e-12)


def test_a_methods_max_norm_is_the_default_and_self_clipping_methods_are_not_clipped_again():
    assert GradStep(ClipsInStep(0.5)).max_norm == 0.5
    assert GradStep(ClipsInStep(0.5), max_norm=2.0).max_norm == 2.0
    assert GradStep(taskgrad.methods.get("nash-mtl")).max_norm is None


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "mean", "dwa"])
def test_normalize_sum_and_mean_norm(method):
    x, y = batch()
    z, L = Net()(x, y)
    res = taskgrad.backward(L, method=taskgrad.methods.get(method), normalize="sum")
    torch.testing.assert_close(res.weights.sum(), torch.ones((), dtype=res.weights.dtype))
    model = Net()
    z, L = model(x, y)
    J = per_task_jacobian(L, shared(model))
    res = taskgrad.backward(L, method=taskgrad.methods.get(method), normalize="mean-norm")
    d = res.weights.to(J.dtype) @ J
    assert float(d.norm()) == pytest.approx(float(J.mean(0).norm()), rel=1e-8)


def test_skip_reason_names_the_task():
    x, y = batch()
    z, L = Net()(x, y)
    res = GradStep(taskgrad.MGDA(), names=["depth", "normals", "seg"], nonfinite="skip").backward(
        [L[0], L[1] * float("inf"), L[2]]
    )
    assert res.skipped and "task 1 ('normals')" in res.reason
