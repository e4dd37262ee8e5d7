"""One gradient path: every entry point is the same step, with the same results.

Regression tests for what used to differ between ``taskgrad.backward``, ``GradStep``,
``TaskOptimizer`` and ``DistributedStep`` (stacked vs listed losses, an op without a vmap
batching rule, parameters no loss reaches, defaults, result types, reentrant checkpointing),
and a hypothesis test that all four write bitwise the same ``.grad`` for every source.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

import taskgrad
from taskgrad.distributed import DistributedStep
from taskgrad.sources import (
    FullGram,
    JacobianGram,
    ModuleLoss,
    RepresentationGram,
    SketchGram,
    parameter_gram,
    representation_gram,
)
from taskgrad.training import GradStep, StepResult, TaskOptimizer


class Twice(torch.autograd.Function):
    """y = 2x whose backward calls .item(): an op without a vmap batching rule."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        scale = float(torch.ones(()).item())
        return 2 * scale * g


class Net(nn.Module):
    def __init__(self, k=3, width=6, seed=0, no_vmap=False, ckpt=None):
        super().__init__()
        torch.manual_seed(seed)
        self.enc1 = nn.Linear(4, width)
        self.enc2 = nn.Linear(width, width)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(k))
        self.no_vmap = no_vmap
        self.ckpt = ckpt
        self.double()

    def encode(self, x):
        h = torch.tanh(self.enc1(x))
        if self.no_vmap:
            h = Twice.apply(h)
        if self.ckpt is not None:
            return checkpoint(lambda t: torch.tanh(self.enc2(t)), h, use_reentrant=self.ckpt)
        return torch.tanh(self.enc2(h))

    def forward(self, x, y):
        z = self.encode(x)
        return z, [((h(z).squeeze(-1) - y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)]


def batch(k=3, n=10, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=dtype), torch.randn(n, k, generator=g, dtype=dtype)


def per_task_jacobian(losses, inputs):
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(x) if g is None else g).reshape(-1)
                    for g, x in zip(gs, inputs, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def shared(model):
    return list(model.enc1.parameters()) + list(model.enc2.parameters())


# ------------------------------------------------------------------ stacked == list
ENTRY_POINTS = ["backward", "gradstep", "taskoptimizer", "distributed"]


def run_entry(entry, model, losses, z, source, method, **kw):
    feats = z if source == "representation" else None
    if entry == "backward":
        return taskgrad.backward(losses, method=method, features=feats, source=source, **kw)
    if entry == "gradstep":
        return GradStep(method, source, **kw).backward(losses, features=feats)
    if entry == "taskoptimizer":
        opt = TaskOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), method=method, source=source, **kw
        )
        return opt.step(losses, features=feats)
    return DistributedStep(method, source, **kw).backward(losses, features=feats)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("source", ["full", "jacobian", "representation"])
def test_stacked_losses_equal_listed_losses_on_every_entry_point(entry, source):
    x, y = batch()
    out = []
    for stacked in (False, True):
        model = Net()
        z, L = model(x, y)
        res = run_entry(entry, model, torch.stack(L) if stacked else L, z, source, taskgrad.MGDA())
        out.append((res, grads(model)))
    (a, ga), (b, gb) = out
    assert torch.equal(a.weights, b.weights) and torch.equal(a.gram, b.gram)
    assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
    if (
        source != "representation"
    ):  # the default Gram is over the shared encoder only, never the heads
        model = Net()
        z, L = model(x, y)
        J = per_task_jacobian(L, shared(model))
        torch.testing.assert_close(a.gram, J @ J.T, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ no vmap batching rule
def test_op_without_batching_rule_gives_the_per_task_loop_gram_everywhere():
    x, y = batch()
    model = Net(no_vmap=True)
    z, L = model(x, y)
    J = per_task_jacobian(L, shared(model))
    Jz = per_task_jacobian(L, [z])
    G, Gz = J @ J.T, Jz @ Jz.T
    torch.testing.assert_close(parameter_gram(L, shared(model)), G, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(representation_gram(L, z), Gz, rtol=1e-10, atol=1e-12)
    for strategy in ("batched", "loop"):
        torch.testing.assert_close(FullGram(strategy=strategy).gram(L), G, rtol=1e-10, atol=1e-12)
    res = taskgrad.backward(L, method=taskgrad.MGDA(), params=shared(model))
    torch.testing.assert_close(res.gram, G, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_op_without_batching_rule_accumulates_exactly(strategy):
    x, y = batch(n=12)
    model = Net(no_vmap=True)
    step = GradStep(taskgrad.MGDA(), FullGram(strategy=strategy))
    for part in (slice(0, 6), slice(6, 12)):
        _, L = model(x[part], y[part])
        step.accumulate(L)
    res = step.backward_accumulated()
    got = grads(model)
    ref_model = Net(no_vmap=True)
    _, L = ref_model(x, y)
    J = per_task_jacobian(L, shared(ref_model))
    w = taskgrad.MGDA()(gram=J @ J.T)
    torch.testing.assert_close(res.weights, w, rtol=1e-9, atol=1e-12)
    (w * torch.stack(L)).sum().backward()
    for a, b in zip(got, grads(ref_model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ unreached parameters
def test_a_parameter_no_loss_reaches_is_a_clear_error_on_every_path():
    x, y = batch()
    model = Net()
    stray = nn.Parameter(torch.ones(3, dtype=torch.float64))
    for call in (
        lambda L, z: FullGram([stray, *shared(model)]).gram(L),
        lambda L, z: JacobianGram([stray]).gram(L),
        lambda L, z: parameter_gram(L, [stray]),
        lambda L, z: taskgrad.backward(L, method=taskgrad.MGDA(), params=[stray]),
        lambda L, z: GradStep(taskgrad.MGDA(), "full").backward(L, params=[stray]),
        lambda L, z: DistributedStep(taskgrad.MGDA(), FullGram([stray])).backward(L),
    ):
        z, L = model(x, y)
        with pytest.raises(ValueError, match="not reached by any loss"):
            call(L, z)
    assert all(p.grad is None for p in model.parameters())


def test_a_loss_that_reaches_no_compared_parameter_is_a_clear_error():
    x, y = batch()
    model = Net()
    z, L = model(x, y)
    side = (model.heads[0].weight ** 2).sum()
    with pytest.raises(ValueError, match=r"\[3\] do not depend"):
        taskgrad.backward([*L, side], method=taskgrad.MGDA(), params=shared(model))
    with pytest.raises(ValueError, match=r"\[3\] do not depend"):
        taskgrad.backward([*L, side], method=taskgrad.MGDA(), features=z)


# ------------------------------------------------------------------ defaults and result type
def test_one_default_and_one_result_type():
    x, y = batch()
    results = []
    for entry in ENTRY_POINTS:
        model = Net()
        z, L = model(x, y)
        bad = [L[0] * float("nan"), *L[1:]]
        # the one default ("auto", no GradScaler): raise, naming the task, on every entry point
        with pytest.raises(FloatingPointError, match="task 0"):
            run_entry(entry, model, bad, z, "full", taskgrad.MGDA())
        assert all(p.grad is None for p in model.parameters())
        model = Net()
        z, L = model(x, y)
        bad = [L[0] * float("nan"), *L[1:]]
        res = run_entry(entry, model, bad, z, "full", taskgrad.MGDA(), nonfinite="skip")
        assert type(res) is StepResult
        assert res.skipped and "task 0" in res.reason
        assert all(p.grad is None for p in model.parameters())
        results.append(res)
    assert taskgrad.BackwardResult is StepResult
    assert taskgrad.distributed.DistributedStepResult is StepResult


def test_repr_does_not_dump_the_gram():
    x, y = batch(k=3)
    model = Net()
    z, L = model(x, y)
    res = taskgrad.backward(L, method=taskgrad.MGDA(), features=z)
    text = repr(res)
    assert "3×3" in text and "tensor(" not in text and len(text) < 200


# ------------------------------------------------------------------ checkpointing
def test_reentrant_checkpointing_is_refused_and_non_reentrant_works():
    x, y = batch()
    model = Net(ckpt=True)
    z, L = model(x, y)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        taskgrad.backward(L, method=taskgrad.MGDA(), params=shared(model))
    plain = Net()
    z, L = plain(x, y)
    ref = taskgrad.backward(L, method=taskgrad.MGDA())
    for source in ("full", "representation"):
        model = Net(ckpt=False)
        z, L = model(x, y)
        res = taskgrad.backward(
            L, method=taskgrad.MGDA(), features=z if source == "representation" else None
        )
        if source == "full":
            torch.testing.assert_close(res.gram, ref.gram, rtol=1e-10, atol=1e-12)
            for a, b in zip(grads(model), grads(plain), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ bitwise-identical entry points
SOURCES = ["full", "full-batched", "jacobian", "representation", "sketch"]


def make_source(name, model, x, y):
    if name == "full":
        return FullGram(strategy="loop")
    if name == "full-batched":
        return FullGram(strategy="batched")
    if name == "jacobian":
        return JacobianGram()
    if name == "representation":
        return RepresentationGram()
    return SketchGram(r=8, seed=5)


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 4),
    width=st.integers(2, 7),
    seed=st.integers(0, 10_000),
    stacked=st.booleans(),
    source=st.sampled_from(SOURCES),
    method=st.sampled_from(["mgda", "mean", "upgrad", "dwa"]),
)
def test_every_entry_point_writes_bitwise_identical_grads(k, width, seed, stacked, source, method):
    x, y = batch(k=k, seed=seed)
    out = []
    for entry in ENTRY_POINTS:
        model = Net(k=k, width=width, seed=seed)
        z, L = model(x, y)
        losses = torch.stack(L) if stacked else L
        src = make_source(source, model, x, y)
        kw = {}
        if source == "sketch":
            kw["loss_fn"] = ModuleLoss(model, lambda out: out[1], x, y)
        if source == "representation":
            kw["features"] = z
        m = taskgrad.methods.get(method)
        if k == 1 and source != "representation":
            kw["params"] = shared(model)
        if entry == "backward":
            res = taskgrad.backward(losses, method=m, source=src, **kw)
        elif entry == "gradstep":
            res = GradStep(m, src).backward(losses, **kw)
        elif entry == "taskoptimizer":
            res = TaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), GradStep(m, src)).step(
                losses, **kw
            )
        else:
            res = DistributedStep(m, src).backward(losses, **kw)
        out.append((res.weights, grads(model)))
    w0, g0 = out[0]
    for w, g in out[1:]:
        assert torch.equal(w, w0)
        assert all(
            (a is None and b is None) or torch.equal(a, b) for a, b in zip(g, g0, strict=True)
        )


def test_auto_nonfinite_skips_under_an_enabled_grad_scaler_and_lowers_its_scale():
    x, y = batch()
    model = Net()
    z, L = model(x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    res = GradStep(taskgrad.MGDA(), "full").backward([L[0] * float("inf"), *L[1:]], scaler=scaler)
    assert res.skipped and "task 0" in res.reason
    assert all(p.grad is None for p in model.parameters())
    assert scaler.get_scale() < 1024.0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("source", ["full", "representation"])
@pytest.mark.parametrize("form", ["unbind", "iterate", "index"])
def test_a_list_of_the_entries_of_a_stack_equals_the_losses_themselves(entry, source, form):
    x, y = batch()
    out = []
    for as_entries in (False, True):
        model = Net()
        z, L = model(x, y)
        if as_entries:
            S = torch.stack(L)
            entries = {"unbind": list(S.unbind()), "iterate": list(S)}
            L = entries.get(form) or [S[i] for i in range(len(L))]
        res = run_entry(entry, model, L, z, source, taskgrad.MGDA(), heads="unweighted")
        out.append((res, grads(model)))
    (a, ga), (b, gb) = out
    assert torch.equal(a.weights, b.weights) and torch.equal(a.gram, b.gram)
    assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
