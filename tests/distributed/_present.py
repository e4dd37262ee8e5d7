"""present= over 3 gloo ranks (``worker``) and its single-process reference (``reference``).

Model: a float64 encoder (Linear + tanh) with k = 3 linear heads; the global batch holds
B = 12 examples, rank r the rows [4r, 4r + 4). Each example is labelled for some tasks only
(``LABELS``); task i's loss on a rank is the masked mean of its squared error over the rank's
labelled examples (0/0 = NaN where it has none). The reference writes the global objective out
by hand on the concatenated batch and takes the method's weights on the Gram of the explicit
task gradients (one autograd.grad per task), not through the library's sources or steps.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import taskgrad
from taskgrad import methods
from taskgrad.distributed import DistributedStep, FeatureHook
from taskgrad.sources import FullGram, SketchGram
from taskgrad.training.present import present_weights

K, D, H, B, R = 3, 5, 6, 12, 3
PER = B // R


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K))

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        return torch.cat([h(z) for h in self.heads], dim=1)


def make_model() -> Net:
    torch.manual_seed(0)
    return Net().double()


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(200 + step)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, K, generator=g, dtype=torch.float64)
    return x, y


def _labels(rows: dict[int, list[int]]) -> Tensor:
    """(B, K) 0/1 label mask: task i labelled on the examples rows[i]."""
    lab = torch.zeros(B, K, dtype=torch.float64)
    for i, rs in rows.items():
        lab[rs, i] = 1.0
    return lab


ALL = list(range(B))
LABELS = {
    # task 0 unevenly on every rank, task 1 on rank 0 only, task 2 nowhere
    "partial": _labels({0: [0, 1, 2, 4, 5, 6, 7, 9], 1: [1, 3]}),
    "every": _labels({0: ALL, 1: ALL, 2: ALL}),
    # every label on rank 0: ranks 1 and 2 have no task present at all
    "one-rank": _labels({0: [0, 1, 3], 1: [2, 3], 2: [1]}),
    # the primary (task 0) nowhere, task 1 on ranks 0 and 2, task 2 on rank 1
    "no-primary": _labels({1: [0, 1, 2, 8, 11], 2: [4, 6]}),
    # 2 micro-batches of 2 examples per rank: task 1 in one micro-batch of rank 1 only
    "accumulate": _labels({0: [0, 1, 3, 5, 6, 7, 8, 10], 1: [6], 2: [0, 2, 3, 4, 9, 10, 11]}),
}


def masked_losses(pred: Tensor, y: Tensor, lab: Tensor) -> list[Tensor]:
    """Per-task masked-mean squared error (NaN for a task with no labelled example)."""
    return [((pred[:, i] - y[:, i]) ** 2 * lab[:, i]).sum() / lab[:, i].sum() for i in range(K)]


def make_method(name: str) -> taskgrad.Weighting:
    if name == "mgda":
        return methods.MGDA()
    if name == "gradvac":
        return methods.GradVac(beta=0.5, generator=torch.Generator().manual_seed(7))
    if name == "primary-aux":
        return methods.PrimaryAux(n_primary=1)
    if name == "mean":
        return methods.Mean()
    raise KeyError(name)


# name -> what to run; "steps" lists (label set, present kind) per SGD step
SCENARIOS: dict[str, dict[str, Any]] = {
    "mgda-bool": {"method": "mgda", "steps": [("partial", "bool")]},
    "mgda-counts": {"method": "mgda", "steps": [("partial", "counts")]},
    "mgda-every": {"method": "mgda", "steps": [("every", "bool")]},
    "mgda-none": {"method": "mgda", "steps": [("every", None)]},
    "mgda-one-rank": {"method": "mgda", "steps": [("one-rank", "bool")]},
    "gradvac": {
        "method": "gradvac",
        "steps": [("every", "bool"), ("partial", "bool"), ("partial", "counts")],
    },
    "primary-skip": {"method": "primary-aux", "steps": [("no-primary", "bool")]},
    "primary-mean": {
        "method": "primary-aux",
        "steps": [("no-primary", "bool")],
        "absent_primary": "mean",
    },
    "accumulate-counts": {"method": "mgda", "steps": [("accumulate", "counts")], "micro": 2},
    # a present task's loss is NaN on rank 2 (a NaN input): every rank skips the step
    "nan-on-rank-2": {"method": "mgda", "steps": [("partial", "bool")], "nan_rank": 2},
}
# the same at the shared representation z (the Gram of the ∂Lᵢ/∂z over the global batch)
for _name in ("mgda-bool", "mgda-counts", "mgda-every", "mgda-none", "mgda-one-rank"):
    SCENARIOS[f"rep-{_name}"] = {**SCENARIOS[_name], "source": "representation"}
SCENARIOS["rep-accumulate-counts"] = {**SCENARIOS["accumulate-counts"], "source": "representation"}
LR = 0.1


def _present(lab: Tensor, kind: str | None) -> Tensor | None:
    if kind is None:
        return None
    n = lab.sum(0)
    return n > 0 if kind == "bool" else n


def _grads(net: nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in net.parameters()]


def _run_one(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    base = make_model()
    ddp = nn.parallel.DistributedDataParallel(base)
    hook = FeatureHook(base.encoder)
    rep = spec.get("source") == "representation"
    source = "representation" if rep else FullGram(list(base.encoder.parameters()))
    skip = "skip" if "nan_rank" in spec else "auto"
    step = DistributedStep(make_method(spec["method"]), source, module=ddp, nonfinite=skip)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    kw = {"absent_primary": methods.Mean()} if spec.get("absent_primary") == "mean" else {}
    out: dict[str, Any] = {"grads": [], "weights": [], "losses": [], "skipped": [], "state": []}
    for t, (labels, kind) in enumerate(spec["steps"]):
        x, y = batch(t)
        rows = slice(rank * PER, (rank + 1) * PER)
        xr, yr, lr_ = x[rows], y[rows], LABELS[labels][rows]
        if spec.get("nan_rank") == rank:
            xr = xr.clone()
            xr[:, 0] = float("nan")
        opt.zero_grad(set_to_none=True)
        n_micro = spec.get("micro")
        if n_micro:
            size = PER // n_micro
            for m in range(n_micro):
                part = slice(m * size, (m + 1) * size)
                pred = ddp(xr[part])
                losses = masked_losses(pred, yr[part], lr_[part])
                step.accumulate(losses, present=_present(lr_[part], kind), features=hook.value)
            res = step.backward_accumulated(**kw)
        else:
            pred = ddp(xr)
            losses = masked_losses(pred, yr, lr_)
            res = step.backward(losses, present=_present(lr_, kind), features=hook.value, **kw)
        out["grads"].append(_grads(base))
        out["weights"].append(res.weights.clone())
        out["losses"].append(res.losses.clone())
        out["skipped"].append(res.skipped)
        out["reason"] = res.reason
        out["state"].append(step.method.state_dict())
        if not res.skipped:
            opt.step()
    hook.remove()
    return out


def _errors(rank: int) -> dict[str, str]:
    """The unsupported combinations: each raises (the same on every rank, before any collective)."""
    base = make_model()
    ddp = nn.parallel.DistributedDataParallel(base)
    hook = FeatureHook(base.encoder)
    x, y = batch(0)
    rows = slice(rank * PER, (rank + 1) * PER)
    lab = LABELS["partial"][rows]
    p = lab.sum(0) > 0
    got: dict[str, str] = {}

    def attempt(name: str, step: DistributedStep, **kw: Any) -> None:
        pred = ddp(x[rows])
        if kw.pop("features", False):
            kw["features"] = hook.value  # the shared representation of this forward
        try:
            step.backward(masked_losses(pred, y[rows], lab), present=p, **kw)
        except (ValueError, TypeError) as err:
            got[name] = str(err)
        assert step._acc is None  # a failed call leaves no window open

    mgda = methods.MGDA
    sketch = SketchGram(r=4, seed=1)
    attempt("sketch", DistributedStep(mgda(), sketch, module=ddp))
    attempt("no-module", DistributedStep(mgda(), "full"))
    attempt("backward_fn", DistributedStep(mgda(), "full", module=ddp), backward_fn=lambda t: None)
    attempt("period", DistributedStep(mgda(), "full", module=ddp, period=2))
    hook.remove()
    return got


def worker(rank: int, world_size: int, names: list[str], path_prefix: str) -> None:
    """Run the named scenarios on this rank and save the results to ``{path_prefix}{rank}.pt``."""
    results: dict[str, Any] = {}
    for name in names:
        try:
            results[name] = _errors(rank) if name == "errors" else _run_one(rank, SCENARIOS[name])
        except Exception:  # recorded: the test reports it
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
    torch.save(results, f"{path_prefix}{rank}.pt")


# ------------------------------------------------------------------ single-process reference
def global_losses(net: Net, z: Tensor, y: Tensor, lab: Tensor, kind: str | None) -> list[Tensor]:
    """The global objective by hand at the features z: bool masks (and None) give task i the
    mean over the ranks where it is present of their masked means; counts give the masked mean
    over the whole batch.
    """
    pred = torch.cat([h(z) for h in net.heads], dim=1)
    if kind == "counts":
        return masked_losses(pred, y, lab)
    out = []
    for i in range(K):
        per_rank = []
        for r in range(R):
            rows = slice(r * PER, (r + 1) * PER)
            n = lab[rows, i].sum()
            if n > 0:
                err = (pred[rows, i] - y[rows, i]) ** 2 * lab[rows, i]
                per_rank.append(err.sum() / n)
        out.append(
            torch.stack(per_rank).mean() if per_rank else torch.tensor(float("nan")).double()
        )
    return out


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The same steps in one process: w from the method on the Gram of the global task
    gradients over the encoder's parameters (or at its output z for the representation
    source), ``.grad`` = Σᵢ wᵢ∇Lᵢ (explicit autograd.grad per task).
    """
    net = make_model()
    method = make_method(spec["method"])
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    params = list(net.parameters())
    enc = list(net.encoder.parameters())
    out: dict[str, Any] = {"grads": [], "weights": [], "losses": [], "state": []}
    for t, (labels, kind) in enumerate(spec["steps"]):
        x, y = batch(t)
        lab = LABELS[labels]
        z = net.encoder(x)
        losses = global_losses(net, z, y, lab, kind)
        present = lab.sum(0) > 0
        idx = present.nonzero().squeeze(-1).tolist()
        at = [z] if spec.get("source") == "representation" else enc
        rows = []
        for i in idx:
            gs_i = torch.autograd.grad(losses[i], at, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs_i]))
        J = torch.stack(rows)
        G = torch.zeros(K, K, dtype=torch.float64)
        G[torch.tensor(idx)[:, None], torch.tensor(idx)] = J @ J.T
        L = torch.stack([x.detach() for x in losses])
        m = method
        if spec.get("absent_primary") == "mean" and not bool(present[0]):
            m = methods.Mean()
        w = present_weights(m, G, torch.nan_to_num(L), present)
        total = sum(float(w[i]) * losses[i] for i in idx)
        gs = torch.autograd.grad(total, params, allow_unused=True)
        out["grads"].append([None if g is None else g.detach() for g in gs])
        out["weights"].append(w)
        out["losses"].append(L)
        out["state"].append(method.state_dict())
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    return out
