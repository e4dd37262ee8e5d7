"""DistributedStep without torch.distributed (one process): an ordinary, exact taskgrad step.

Fast checks of what the 2-rank tests do not reach: the GradScaler path, the periodic schedule,
DistributedSource as a plain GramSource inside the training integration, and the errors.
"""

from __future__ import annotations

import pytest
import torch

import taskgrad
from taskgrad.distributed import (
    DistributedSource,
    DistributedStep,
    Traffic,
    assert_identical,
    local_jacobian,
)
from taskgrad.sources import FullGram, RepresentationGram

from . import _scenarios as sc


def _model_and_losses(seed=0):
    model = sc.make_model()
    x, y = sc.batch(seed)
    pred, z = model(x)
    return model, sc.task_losses(pred, y), z


@pytest.mark.parametrize("source", ["representation", "full"])
def test_equals_taskgrad_backward(source):
    model, losses, z = _model_and_losses()
    step = DistributedStep(
        taskgrad.MGDA(),
        RepresentationGram()
        if source == "representation"
        else FullGram(list(model.encoder.parameters())),
    )
    res = step.backward(losses, features=z)
    grads = [p.grad.clone() for p in model.parameters()]
    model2, losses2, z2 = _model_and_losses()
    kw = (
        {"features": z2}
        if source == "representation"
        else {"params": list(model2.encoder.parameters())}
    )
    ref = taskgrad.backward(losses2, method=taskgrad.MGDA(), **kw)
    assert torch.allclose(res.weights, ref.weights, atol=1e-12)
    assert torch.allclose(res.gram, ref.gram, atol=1e-12)
    for g, p in zip(grads, model2.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-12)
    # one process: the Gram itself is exchanged (k²); across ranks the full source sends k × P
    assert res.numel_reduced == 1 + sc.K + sc.K * sc.K


def test_grad_scaler_scales_backward_not_weights():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model, losses, z = _model_and_losses()
    res = DistributedStep(taskgrad.MGDA(), "representation").backward(
        losses, features=z, scaler=scaler
    )
    scaled = [p.grad.clone() for p in model.parameters()]
    model2, losses2, z2 = _model_and_losses()
    ref = DistributedStep(taskgrad.MGDA(), "representation").backward(losses2, features=z2)
    assert torch.allclose(res.weights, ref.weights, atol=1e-12)
    assert torch.allclose(res.gram, ref.gram, rtol=1e-12)
    for g, p in zip(scaled, model2.parameters(), strict=True):
        assert torch.allclose(g, 1024.0 * p.grad, rtol=1e-10)


def test_nan_skips_and_backs_off_the_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model, losses, z = _model_and_losses()
    res = DistributedStep(taskgrad.MGDA(), "representation").backward(
        [losses[0] * float("nan"), *losses[1:]], features=z, scaler=scaler
    )
    assert res.skipped and res.bad_ranks == 1 and torch.isnan(res.weights).all()
    assert all(p.grad is None for p in model.parameters())
    assert scaler.get_scale() == 512.0
    with pytest.raises(FloatingPointError, match="1 of 1 ranks"):
        DistributedStep(taskgrad.MGDA(), "representation", nonfinite="raise").backward(
            [losses[0] * float("nan"), *losses[1:]], features=z
        )


def test_periodic_schedule_reuses_weights_without_gram():
    traffic = Traffic()
    step = DistributedStep(taskgrad.MGDA(), "representation", period=2, traffic=traffic)
    ws = []
    for t in range(3):
        model, losses, z = _model_and_losses(t)
        res = step.backward(losses, features=z)
        ws.append((res.weights.clone(), res.refreshed, res.gram is None))
    assert ws[0][1] and not ws[1][1] and ws[2][1]
    assert torch.equal(ws[0][0], ws[1][0]) and ws[1][2]
    assert [n for _, n in traffic.log] == [1 + sc.K + sc.K**2, 1 + sc.K, 1 + sc.K + sc.K**2]


def test_distributed_source_inside_gradstep():
    """The wrapper is a GramSource: GradStep can use it unchanged."""
    from taskgrad.training import GradStep

    model, losses, z = _model_and_losses()
    res = GradStep(taskgrad.MGDA(), DistributedSource(RepresentationGram())).backward(
        losses, features=z
    )
    model2, losses2, z2 = _model_and_losses()
    ref = taskgrad.backward(losses2, method=taskgrad.MGDA(), features=z2)
    assert torch.allclose(res.weights, ref.weights, atol=1e-12)


def test_local_jacobian_rows_are_task_gradients():
    model, losses, z = _model_and_losses()
    params = list(model.encoder.parameters())
    J = local_jacobian(torch.stack(losses), params)
    for i, loss in enumerate(losses):
        g = torch.autograd.grad(loss, params, retain_graph=True)
        assert torch.allclose(J[i], torch.cat([t.reshape(-1) for t in g]), atol=1e-12)


def test_clear_errors():
    model, losses, z = _model_and_losses()
    with pytest.raises(ValueError, match="features=z"):
        DistributedStep(taskgrad.MGDA(), "representation").backward(losses)
    with pytest.raises(ValueError, match="module=ddp_model"):
        DistributedStep(taskgrad.MGDA(), "representation").accumulate(losses, features=z)
    with pytest.raises(TypeError, match="Weighting"):
        DistributedStep("mgda")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="twice"):
        DistributedSource(DistributedSource())
    with pytest.raises(RuntimeError, match="nothing accumulated"):
        DistributedStep(module=model).backward_accumulated()
    assert_identical(torch.ones(3))  # one process: nothing to compare, no error


def test_state_dict_round_trip():
    step = DistributedStep(taskgrad.methods.DWA(), "representation")
    for t in range(3):
        model, losses, z = _model_and_losses(t)
        step.backward(losses, features=z)
    state = step.state_dict()
    other = DistributedStep(taskgrad.methods.DWA(), "representation")
    other.load_state_dict(state)
    model, losses, z = _model_and_losses(5)
    a = step.backward(losses, features=z).weights
    model, losses, z = _model_and_losses(5)
    b = other.backward(losses, features=z).weights
    assert torch.equal(a, b)
    assert not torch.allclose(a, torch.ones_like(a))
