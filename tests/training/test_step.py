"""GradStep / TaskOptimizer: weights, schedules, accumulation, AMP, checkpoints, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad.models import MultiHead
from taskgrad.solvers import min_norm_simplex
from taskgrad.sources import FullGram, JacobianGram, ModuleLoss, RepresentationGram, SketchGram
from taskgrad.training import GradStep, TaskOptimizer, TaskSubsample


def small_model(k=3, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 6), nn.Tanh())
    return MultiHead(enc, 6, k, 1).to(dtype)


def task_losses(model, x, y):
    z, outs = model(x)
    return z, [((o.squeeze(-1) - y[:, i]) ** 2).mean() for i, o in enumerate(outs)]


def data(n=16, k=3, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randn(n, k, generator=g, dtype=dtype)


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("source", ["full", "representation"])
def test_gradstep_applies_mgda_weights_of_the_gram(source):
    model = small_model(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    z, L = task_losses(model, x, y)
    shared = list(model.encoder.parameters())
    if source == "full":
        rows = [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, shared, retain_graph=True)])
            for li in L
        ]
    else:
        rows = [torch.autograd.grad(li, z, retain_graph=True)[0].reshape(-1) for li in L]
    J = torch.stack(rows)
    w_ref = min_norm_simplex(J @ J.T)
    res = GradStep(taskgrad.MGDA(), source).backward(
        L, features=z if source == "representation" else None
    )
    torch.testing.assert_close(res.weights, w_ref)
    got = flat_grad(model)
    model.zero_grad()
    _, L2 = task_losses(model, x, y)
    (w_ref * torch.stack(L2)).sum().backward()
    torch.testing.assert_close(got, flat_grad(model))


def test_periodic_reuses_weights_and_ema_follows_its_formula():
    model = small_model()
    gs = GradStep(taskgrad.MGDA(), "full", period=3, ema=0.5)
    grams, ws = [], []
    for t in range(4):
        x, y = data(seed=t)
        _, L = task_losses(model, x, y)
        grams.append(FullGram().gram(torch.stack(L)).detach())
        res = gs.backward(L)
        assert res.refreshed == (t % 3 == 0)
        ws.append(res.weights)
    assert torch.equal(ws[1], ws[0]) and torch.equal(ws[2], ws[0])
    ema = 0.5 * grams[0] + 0.5 * grams[3]
    torch.testing.assert_close(gs.schedule.gram_avg, ema, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ws[3], min_norm_simplex(ema), rtol=1e-4, atol=1e-6)


class Ones(taskgrad.Weighting):
    needs = frozenset({"losses"})

    def compute(self, *, gram, losses):
        return torch.ones_like(losses)


@pytest.mark.parametrize(
    "normalized,method,target", [(True, taskgrad.Mean(), 0.25), (False, Ones(), 1.0)]
)
def test_subsampling_is_unbiased_for_fixed_weights(normalized, method, target):
    """E over draws of the applied weight of each task equals the full-k weight
    (Horvitz–Thompson).
    """
    k, m, n = 4, 2, 3000
    sub = TaskSubsample(m, seed=0, normalized=normalized)
    gs = GradStep(method, "full", subsample=sub)
    total = torch.zeros(k)
    L = torch.ones(k)
    for _ in range(n):
        v, _, subset, _ = gs._decide(L, None, gs._plan(k, L.device))[:4]
        assert subset.numel() == m
        total += v
    mean = total / n
    # binomial noise: sd of the mean ≈ target·sqrt((k/m − 1)/n)
    assert (mean - target).abs().max() < 5 * target * ((k / m - 1) / n) ** 0.5


@pytest.mark.parametrize("source", ["full", "representation", "sketch"])
def test_accumulation_is_exact(source):
    model = small_model(dtype=torch.float64)
    x, y = data(n=12, dtype=torch.float64)
    src = {
        "full": FullGram(),
        "representation": RepresentationGram(),
        "sketch": SketchGram(16, seed=3),
    }[source]
    gs_big = GradStep(taskgrad.MGDA(), copy.deepcopy(src))
    z, L = task_losses(model, x, y)
    kw = {"features": z} if source == "representation" else {}
    if source == "sketch":
        kw["loss_fn"] = ModuleLoss(
            model,
            lambda out: [((o.squeeze(-1) - y[:, i]) ** 2).mean() for i, o in enumerate(out[1])],
            x,
        )
    big = gs_big.backward(L, **kw)
    g_big = flat_grad(model)
    model.zero_grad()
    gs = GradStep(taskgrad.MGDA(), copy.deepcopy(src))
    for part in (slice(0, 6), slice(6, 12)):
        xp, yp = x[part], y[part]
        zp, Lp = task_losses(model, xp, yp)
        kw = {"features": zp} if source == "representation" else {}
        if source == "sketch":
            kw["loss_fn"] = ModuleLoss(
                model,
                lambda out, yp=yp: [
                    ((o.squeeze(-1) - yp[:, i]) ** 2).mean() for i, o in enumerate(out[1])
                ],
                xp,
            )
        gs.accumulate(Lp, **kw)
    acc = gs.backward_accumulated()
    torch.testing.assert_close(acc.gram, big.gram)
    torch.testing.assert_close(acc.weights, big.weights)
    torch.testing.assert_close(flat_grad(model), g_big)


def _run(opt, model, steps, seed0):
    out = []
    for t in range(steps):
        x, y = data(seed=seed0 + t, k=5)
        _, L = task_losses(model, x, y)
        res = opt.step(L)
        out.append((res.weights.clone(), [p.detach().clone() for p in model.parameters()]))
    return out


def test_resume_from_checkpoint_is_bit_identical():
    def build():
        model = small_model(k=5)
        sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gs = GradStep(
            taskgrad.MGDA(), "full", period=3, ema=0.7, subsample=TaskSubsample(3, seed=11)
        )
        return model, TaskOptimizer(sgd, gs)

    model, opt = build()
    _run(opt, model, 4, 0)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    ref = _run(opt, model, 4, 100)
    model2, opt2 = build()
    _run(opt2, model2, 1, 50)  # disturb its state: the checkpoint must overwrite all of it
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    got = _run(opt2, model2, 4, 100)
    for (w1, p1), (w2, p2) in zip(ref, got, strict=True):
        assert torch.equal(w1, w2)
        assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


class InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_amp_autocast_scaler_and_nonfinite_steps_are_skipped():
    model = small_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = TaskOptimizer(sgd, GradStep(taskgrad.MGDA(), "full"), scaler=scaler)
    x, y = data()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same forward without the scaler first
        z, L = task_losses(model, x, y)
    G = FullGram().gram(L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, L = task_losses(model, x, y)
    res = opt.step(L)
    assert not res.skipped and res.gram.dtype == torch.float32
    # the Gram is unscaled: it matches the one computed without the scaler (bf16 tolerance)
    torch.testing.assert_close(res.gram, G, rtol=0.1, atol=1e-3 * float(G.abs().max()))
    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    z, L = task_losses(model, x, y)
    L[0] = InfGrad.apply(L[0])
    res = opt.step(L)
    assert res.skipped and "non-finite" in res.reason and opt.n_skipped == 1
    assert scaler.get_scale() < scale
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    z, L = task_losses(model, x, y)
    L[1] = L[1] * float("nan")
    assert opt.step(L).skipped and opt.n_skipped == 2
    with pytest.raises(FloatingPointError):
        z, L = task_losses(model, x, y)
        GradStep(taskgrad.MGDA(), "full", nonfinite="raise").backward(
            [L[0] * float("inf"), L[1], L[2]]
        )


def test_first_step_nonfinite_lowers_a_fresh_scaler():
    model = small_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = TaskOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        GradStep(taskgrad.MGDA(), "full"),
        scaler=scaler,
    )
    x, y = data()
    z, L = task_losses(model, x, y)
    res = opt.step([L[0] * float("nan"), L[1], L[2]])  # the scaler has scaled nothing yet
    assert res.skipped and opt.n_skipped == 1
    assert scaler.get_scale() == 2.0**10 * scaler.get_backoff_factor()


@pytest.mark.slow
def test_compiled_model_with_every_source():
    try:
        model = small_model()
        compiled = torch.compile(
            model, backend="aot_eager"
        )  # inductor: minutes of C++ builds on 2 cores
        x, y = data()
        compiled(x)
    except Exception as err:  # pragma: no cover - environment dependent
        pytest.skip(f"torch.compile does not work on this machine: {type(err).__name__}: {err}")
    lf = lambda out: [((o.squeeze(-1) - y[:, i]) ** 2).mean() for i, o in enumerate(out[1])]  # noqa: E731
    z, outs = model(x)
    ref = {
        "full": FullGram().gram(torch.stack(lf((z, outs)))),
        "representation": RepresentationGram().gram(torch.stack(lf((z, outs))), features=z),
    }
    # a compiled forward is one autograd node, so the shared parameters cannot be found by a graph
    # walk: name them (the encoder's) explicitly.
    enc = list(model.encoder.parameters())
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder.")]
    for name, src in [
        ("full", FullGram(enc)),
        ("jacobian", JacobianGram(enc)),
        ("representation", RepresentationGram()),
        ("sketch", SketchGram(4096, chunk=1024, param_names=names)),
    ]:
        compiled.zero_grad()
        if (
            name == "representation"
        ):  # z must be a graph boundary: compile the encoder, not the heads
            twin = copy.deepcopy(model)
            twin.encoder = torch.compile(twin.encoder, backend="aot_eager")
            out = twin(x)
            res = GradStep(taskgrad.MGDA(), src).backward(lf(out), features=out[0])
            torch.testing.assert_close(res.gram, ref["representation"], rtol=1e-4, atol=1e-6)
            continue
        out = compiled(x)
        L = lf(out)
        kw = {"features": out[0]} if name == "representation" else {}
        if name == "sketch":
            kw["loss_fn"] = ModuleLoss(compiled, lf, x)
        res = GradStep(taskgrad.MGDA(), src).backward(L, **kw)
        target = ref["representation" if name == "representation" else "full"]
        if name == "sketch":
            assert ((res.gram - target).norm() / target.norm()) < 0.25
        else:
            torch.testing.assert_close(res.gram, target, rtol=1e-4, atol=1e-6)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
