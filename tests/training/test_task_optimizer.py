"""TaskOptimizer behaves as a torch.optim.Optimizer: schedulers, zero_grad, param_groups,
state_dict with bit-identical resume, GradScaler."""

from __future__ import annotations

import copy

import pytest
import torch

import taskgrad
from taskgrad.sources import ModuleLoss, SketchGram
from taskgrad.training import GradStep, TaskOptimizer

from .test_one_path import Net, batch


def make(seed=0, method="dwa", source="full", period=1, ema=None):
    model = Net(seed=seed)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    src = SketchGram(r=4, seed=3) if source == "sketch" else source
    opt = TaskOptimizer(inner, GradStep(taskgrad.methods.get(method), src, period=period, ema=ema))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, steps, start=0, source="full"):
    for t in range(start, start + steps):
        x, y = batch(seed=100 + t)
        z, L = model(x, y)
        kw = {"features": z} if source == "representation" else {}
        if source == "sketch":
            kw["loss_fn"] = ModuleLoss(model, lambda out: out[1], x, y)
        opt.step(L, **kw)
        sched.step()


def test_is_an_optimizer_and_schedulers_drive_the_wrapped_one():
    model, opt, sched = make()
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    train(model, opt, sched, 5)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**2)
    for cls, kw in [
        (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 4}),
        (torch.optim.lr_scheduler.LambdaLR, {"lr_lambda": lambda e: 0.9**e}),
    ]:
        m2, o2, _ = make()
        s2 = cls(o2, **kw)
        train(m2, o2, s2, 2)
        assert o2.optimizer.param_groups[0]["lr"] < 1e-2
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert opt.optimizer.param_groups[0]["lr"] < 1e-2 * 0.5**2


def test_zero_grad_and_closure_errors():
    model, opt, _ = make()
    x, y = batch()
    z, L = model(x, y)
    taskgrad.backward(L)
    assert any(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(TypeError, match="closure"):
        opt.step(lambda: 0.0)
    with pytest.raises(TypeError, match="only once"):
        TaskOptimizer(opt)


@pytest.mark.parametrize(
    "source,method,period,ema",
    [("full", "dwa", 1, None), ("representation", "mgda", 3, 0.5), ("sketch", "mgda", 1, None)],
)
def test_resume_is_bit_identical_with_scheduler(source, method, period, ema):
    model, opt, sched = make(method=method, source=source, period=period, ema=ema)
    train(model, opt, sched, 6, source=source)
    straight = [p.detach().clone() for p in model.parameters()]
    model, opt, sched = make(method=method, source=source, period=period, ema=ema)
    train(model, opt, sched, 3, source=source)
    ckpt = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    )
    model2, opt2, sched2 = make(seed=1, method=method, source=source, period=period, ema=ema)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    train(model2, opt2, sched2, 3, start=3, source=source)
    for a, b in zip(straight, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_grad_scaler_with_a_scheduler():
    model, opt, sched = make(method="mgda")
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ref, ropt, rsched = make(method="mgda")
    for t in range(3):
        x, y = batch(seed=t)
        _, L = model(x, y)
        res = opt.step(L)
        sched.step()
        _, L = ref(x, y)
        rres = ropt.step(L)
        rsched.step()
        assert not res.skipped
        torch.testing.assert_close(res.weights, rres.weights, rtol=1e-9, atol=1e-12)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert opt.state_dict()["scaler"]["scale"] == 256.0
