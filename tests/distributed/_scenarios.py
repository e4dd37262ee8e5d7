"""Scenarios run on 2 gloo ranks (``worker``) and their single-process references (``reference``).

Model: a float64 encoder (Linear + tanh) with k = 3 linear heads; global batch B = 8 per step,
rank r holding rows [4r, 4r + 4). Each scenario runs a few SGD steps and records, per step, the
weights and, at the end, the parameters. The reference recomputes everything in one process on
the global batch with explicit per-task gradients (one autograd.grad per task) — not with the
library's sources — and the method applied to that Gram.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import taskgrad
from taskgrad import methods
from taskgrad.distributed import DistributedStep, FeatureHook
from taskgrad.sources import FullGram, ModuleLoss, RepresentationGram, SketchGram

K, D, H, B, R = 3, 5, 6, 8, 2
STEPS = 3
LR = 0.1


class Net(nn.Module):
    def __init__(self, unused: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K))
        self.unused = nn.Linear(2, 2) if unused else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return torch.cat([h(z) for h in self.heads], dim=1), z


def make_model(unused: bool = False, dtype: torch.dtype = torch.float64) -> Net:
    torch.manual_seed(0)
    return Net(unused).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, K, generator=g, dtype=torch.float64) + torch.tensor(
        [0.0, 1.0, -1.0], dtype=torch.float64
    )
    return x.to(dtype), y.to(dtype)


def task_losses(pred: Tensor, y: Tensor) -> list[Tensor]:
    return [((pred[:, i] - y[:, i]) ** 2).mean() + 0.1 * i * pred[:, i].mean() for i in range(K)]


def make_method(name: str) -> taskgrad.Weighting:
    if name == "mean":
        return methods.Mean()
    if name == "mgda":
        return methods.MGDA()
    if name == "primary-aux":
        return methods.PrimaryAux(n_primary=1)
    if name == "dwa":
        return methods.DWA(temperature=2.0)
    if name == "gradvac":
        return methods.GradVac(beta=0.5, generator=torch.Generator().manual_seed(7))
    raise KeyError(name)


class RankSkewed(methods.MGDA):
    """MGDA with a rank-dependent perturbation: the debug check must catch it."""

    def compute(self, *, gram, losses):
        w = super().compute(gram=gram, losses=losses)
        return w + 1e-3 * dist.get_rank()


# name -> (method, source, options)
SCENARIOS: dict[str, dict[str, Any]] = {}
for m in ("mean", "mgda", "primary-aux", "dwa", "gradvac"):
    SCENARIOS[f"rep-{m}"] = {"method": m, "source": "representation"}
for m in ("mgda", "primary-aux", "gradvac"):
    SCENARIOS[f"full-{m}"] = {"method": m, "source": "full"}
SCENARIOS["sketch-mgda"] = {"method": "mgda", "source": "sketch"}
SCENARIOS["nan-rep-mgda"] = {
    "method": "mgda",
    "source": "representation",
    "nan": (1, 1),
}  # step 1, rank 1
SCENARIOS["nan-full-dwa"] = {"method": "dwa", "source": "full", "nan": (0, 0)}
SCENARIOS["accum-rep-mgda"] = {"method": "mgda", "source": "representation", "accumulate": 2}
SCENARIOS["accum-full-primary-aux"] = {"method": "primary-aux", "source": "full", "accumulate": 2}
SCENARIOS["accum-sketch-mgda"] = {"method": "mgda", "source": "sketch", "accumulate": 2}
SCENARIOS["accum-rep-dwa"] = {"method": "dwa", "source": "representation", "accumulate": 2}
SCENARIOS["nosync-rep-mgda"] = {"method": "mgda", "source": "representation", "micro": 2}
SCENARIOS["unused-rep-gradvac"] = {"method": "gradvac", "source": "representation", "unused": True}
SCENARIOS["unused-full-mgda"] = {"method": "mgda", "source": "full", "unused": True}
SCENARIOS["unused-accum-rep-mgda"] = {
    "method": "mgda",
    "source": "representation",
    "unused": True,
    "accumulate": 2,
}


def _source(name: str, model: Net):
    if name == "representation":
        return RepresentationGram()
    if name == "full":
        return FullGram(list(model.encoder.parameters()))
    if name == "sketch":
        return SketchGram(r=16, seed=3, param_names=["encoder.0.weight", "encoder.0.bias"])
    raise KeyError(name)


def _shard(t: Tensor, rank: int, micro: int | None = None, n_micro: int = 1) -> Tensor:
    part = t[rank * (B // R) : (rank + 1) * (B // R)]
    if micro is None:
        return part
    size = part.shape[0] // n_micro
    return part[micro * size : (micro + 1) * size]


def _run_one(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    base = make_model(spec.get("unused", False))
    ddp = nn.parallel.DistributedDataParallel(
        base, find_unused_parameters=spec.get("unused", False)
    )
    hook = FeatureHook(base.encoder)
    step = DistributedStep(
        make_method(spec["method"]),
        _source(spec["source"], base),
        module=ddp,
        debug=True,
        nonfinite="skip" if spec.get("nan") else "auto",
    )
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    out: dict[str, Any] = {"weights": [], "skipped": [], "gram": []}
    n_acc = spec.get("accumulate")
    n_micro = spec.get("micro")
    for t in range(STEPS):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        if n_acc:
            for m in range(n_acc):
                ctx = ddp.no_sync() if m < n_acc - 1 else contextlib.nullcontext()
                with ctx:
                    xm, ym = _shard(x, rank, m, n_acc), _shard(y, rank, m, n_acc)
                    pred, _ = ddp(xm)
                    kw = (
                        {"loss_fn": ModuleLoss(base, lambda o, ym=ym: task_losses(o[0], ym), xm)}
                        if spec["source"] == "sketch"
                        else {}
                    )
                    step.accumulate(task_losses(pred, ym), features=hook.value, **kw)
            res = step.backward_accumulated()
            out["weights"].append(res.weights.clone())
        elif n_micro:
            ws = []
            for m in range(n_micro):
                ctx = ddp.no_sync() if m < n_micro - 1 else contextlib.nullcontext()
                with ctx:
                    xm, ym = _shard(x, rank, m, n_micro), _shard(y, rank, m, n_micro)
                    pred, _ = ddp(xm)
                    res = step.backward(task_losses(pred, ym), features=hook.value)
                    ws.append(res.weights.clone())
            out["weights"].append(torch.stack(ws))
        else:
            xr, yr = _shard(x, rank), _shard(y, rank)
            if "nan" in spec and spec["nan"] == (t, rank):
                xr = xr.clone()
                xr[0, 0] = float("nan")
            pred, _ = ddp(xr)
            kw = {}
            if spec["source"] == "sketch":
                kw["loss_fn"] = ModuleLoss(base, lambda o, yr=yr: task_losses(o[0], yr), xr)
            res = step.backward(task_losses(pred, yr), features=hook.value, **kw)
            out["weights"].append(res.weights.clone())
            out["gram"].append(None if res.gram is None else res.gram.clone())
        out["skipped"].append(res.skipped)
        if not res.skipped:
            opt.step()
    out["params"] = [p.detach().clone() for p in base.parameters()]
    hook.remove()
    return out


def _run_debug_catch(rank: int) -> dict[str, Any]:
    base = make_model()
    ddp = nn.parallel.DistributedDataParallel(base)
    hook = FeatureHook(base.encoder)
    step = DistributedStep(RankSkewed(), "representation", debug=True)
    x, y = batch(0)
    pred, _ = ddp(_shard(x, rank))
    try:
        step.backward(task_losses(pred, _shard(y, rank)), features=hook.value)
    except RuntimeError as e:
        return {"raised": str(e)}
    return {"raised": None}


def _run_bf16(rank: int) -> dict[str, Any]:
    """float32 model under bfloat16 autocast: ranks must still apply identical weights."""
    base = make_model(dtype=torch.float32)
    ddp = nn.parallel.DistributedDataParallel(base)
    hook = FeatureHook(base.encoder)
    step = DistributedStep(methods.MGDA(), "representation", module=ddp, debug=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    ws = []
    for t in range(STEPS):
        x, y = batch(t, torch.float32)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred, _ = ddp(_shard(x, rank))
            losses = task_losses(pred.float(), _shard(y, rank))
        res = step.backward(losses, features=hook.value)
        ws.append(res.weights.clone())
        opt.step()
    # the debug step already asserted identical weights and parameters; record them too
    return {
        "weights": ws,
        "params": [p.detach().clone() for p in base.parameters()],
        "gram_dtype": str(res.gram.dtype),
    }


def worker(rank: int, world_size: int, names: list[str], path_prefix: str) -> None:
    """Run the named scenarios on this rank and save the results to ``{path_prefix}{rank}.pt``."""
    results: dict[str, Any] = {}
    for name in names:
        try:
            if name == "debug-catch":
                results[name] = _run_debug_catch(rank)
            elif name == "bf16":
                results[name] = _run_bf16(rank)
            else:
                results[name] = _run_one(rank, SCENARIOS[name])
        except Exception:  # recorded: the test reports it
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
    torch.save(results, f"{path_prefix}{rank}.pt")


# ------------------------------------------------------------------ single-process reference
def _explicit_gram(losses: list[Tensor], inputs: list[Tensor]) -> Tensor:
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros_like(x).reshape(-1) if g is None else g.reshape(-1)
                    for g, x in zip(gs, inputs, strict=True)
                ]
            )
        )
    J = torch.stack(rows)
    return J @ J.T


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The same training on the global batch in one process, from explicit per-task gradients."""
    model = make_model(spec.get("unused", False))
    method = make_method(spec["method"])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sketch = (
        SketchGram(r=16, seed=3, param_names=["encoder.0.weight", "encoder.0.bias"])
        if spec["source"] == "sketch"
        else None
    )
    out: dict[str, Any] = {"weights": [], "skipped": [], "gram": []}

    def gram_of(losses: list[Tensor], z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        if spec["source"] == "representation":
            return _explicit_gram(losses, [z])
        if spec["source"] == "full":
            return _explicit_gram(losses, list(model.encoder.parameters()))
        return sketch.gram(
            torch.stack(losses), loss_fn=ModuleLoss(model, lambda o: task_losses(o[0], y), x)
        ).detach()

    n_micro = spec.get("micro")
    for t in range(STEPS):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        if "nan" in spec and spec["nan"][0] == t:
            out["weights"].append(None)
            out["gram"].append(None)
            out["skipped"].append(True)
            continue
        if n_micro:
            ws = []
            for m in range(n_micro):
                idx = torch.cat(
                    [
                        torch.arange(r * (B // R), (r + 1) * (B // R))[
                            m * (B // R // n_micro) : (m + 1) * (B // R // n_micro)
                        ]
                        for r in range(R)
                    ]
                )
                pred, z = model(x[idx])
                losses = task_losses(pred, y[idx])
                G = gram_of(losses, z, x[idx], y[idx])
                w = method(
                    gram=G if "gram" in method.needs else None, losses=torch.stack(losses).detach()
                )
                (w * torch.stack(losses)).sum().backward()
                ws.append(w.detach())
            out["weights"].append(torch.stack(ws))
        else:
            pred, z = model(x)
            losses = task_losses(pred, y)
            G = gram_of(losses, z, x, y)
            w = method(
                gram=G if "gram" in method.needs else None, losses=torch.stack(losses).detach()
            )
            (w * torch.stack(losses)).sum().backward()
            out["weights"].append(w.detach())
            out["gram"].append(G.detach() if "gram" in method.needs else None)
        out["skipped"].append(False)
        opt.step()
    out["params"] = [p.detach().clone() for p in model.parameters()]
    return out
