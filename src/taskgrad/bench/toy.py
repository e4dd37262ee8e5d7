"""Training on the two-objective CAGrad toy (:mod:`taskgrad.datasets.toy`): trajectories of a
method from the standard starts, and :func:`run_toy`, the harness of ``kind = "toy"`` configs.

:func:`trajectories` runs Adam on θ with the update d = Jᵀw, w = method(G = JJᵀ, L), for any
:class:`~taskgrad.methods.Weighting`. :func:`run_toy` runs several methods and saves
``OUT/<name>/toy.json``; a method whose saved trajectories have the same settings (method,
arguments, steps, lr, scale, recording) is reused, and a method that fails is recorded with its
error while the others still run and are saved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets.toy import STARTS, pareto_front, toy_losses
from ..methods import MethodConvergenceError, UndefinedMethodError, Weighting
from .methods import make_method

__all__ = ["DEMO_METHODS", "run_toy", "trajectories"]

DEMO_METHODS = ("mean", "mgda", "pcgrad", "cagrad", "nash-mtl", "primary-aux")
# a step without weights: the start keeps its previous ones (counted in ``undefined_steps``)
_NO_SOLUTION = (UndefinedMethodError, MethodConvergenceError)


def _jacobian(theta: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Losses L (B, 2) and Jacobians J (B, 2, 2) at B independent points θ (B, 2)."""
    th = theta.detach().requires_grad_(True)
    L = toy_losses(th, scale)
    J = torch.stack(
        [torch.autograd.grad(L[:, i].sum(), th, retain_graph=i == 0)[0] for i in range(2)], 1
    )
    return L.detach(), J


def _weights(
    methods: list[Weighting], L: Tensor, G: Tensor, prev: Tensor, undefined: np.ndarray
) -> Tensor:
    """Weights (B, 2): one batched call when ``methods`` has one (stateless) instance, else one
    call per start. Where a method has no solution (UndefinedMethodError, e.g. Nash-MTL with
    opposite gradients) or its solver does not converge (MethodConvergenceError, e.g. Nash-MTL's
    Newton solve on nearly opposite gradients) the start keeps its previous weights, as the
    reference implementations do when their solver fails, and ``undefined`` counts it.
    """

    def one(m: Weighting, i: int) -> Tensor:
        try:
            return m(gram=G[i] if "gram" in m.needs else None, losses=L[i]).detach()
        except _NO_SOLUTION:
            undefined[i] += 1
            return prev[i]

    if len(methods) == 1:
        m = methods[0]
        try:
            return m(gram=G if "gram" in m.needs else None, losses=L).detach()
        except _NO_SOLUTION:
            return torch.stack([one(m, i) for i in range(L.shape[0])])
    return torch.stack([one(m, i) for i, m in enumerate(methods)])


def trajectories(
    make_method: Callable[[], Weighting],
    steps: int = 700,
    lr: float = 0.05,
    scale: float = 0.1,
    starts: Sequence[Sequence[float]] = STARTS,
    record_every: int = 1,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Adam(lr) on θ from each start with d = Jᵀw (Nash-MTL's protocol is lr 1e-3, 35k steps;
    the default lr 0.05 × 700 steps covers the same Adam path length in 50× fewer steps).

    All starts advance together: one batched method call when the method accepts a batch of
    Gram matrices and its state is per-problem (batched), otherwise one instance per start.
    Returns ``theta``, ``losses`` and ``weights``, each (n_starts, T, 2), recorded every
    ``record_every`` steps and at the last, and ``undefined_steps`` (n_starts,): steps where the
    method was undefined or its solver did not converge and the previous weights were kept.
    Non-finite losses or weights raise FloatingPointError.
    """
    if steps < 1 or lr <= 0 or record_every < 1:
        raise ValueError(
            f"steps and record_every must be ≥ 1 and lr > 0, got {steps}, {record_every}, {lr}."
        )
    theta = torch.nn.Parameter(torch.tensor([list(s) for s in starts], dtype=torch.float64))
    if theta.dim() != 2 or theta.shape[1] != 2:
        raise ValueError(
            f"starts must be a sequence of (x, y) pairs, got shape {tuple(theta.shape)}."
        )
    B = theta.shape[0]
    opt = torch.optim.Adam([theta], lr=lr)
    methods = [make_method()]
    L, J = _jacobian(theta, scale)
    undefined = np.zeros(B, dtype=np.int64)
    w = torch.full((B, 2), 0.5, dtype=torch.float64)
    try:  # batched only for methods without per-problem state (their state would mix the starts)
        w = _weights(methods, L, J @ J.transpose(-1, -2), w, undefined)
        if w.shape != (B, 2) or methods[0].state_dict():
            raise ValueError("not batchable")
    except Exception:
        methods = [make_method() for _ in range(B)]
        undefined[:] = 0
        w = _weights(
            methods,
            L,
            J @ J.transpose(-1, -2),
            torch.full((B, 2), 0.5, dtype=torch.float64),
            undefined,
        )
    rec: dict[str, list] = {"theta": [], "losses": [], "weights": []}
    for t in range(steps + 1):
        if t > 0:
            L, J = _jacobian(theta, scale)
            w = _weights(methods, L, J @ J.transpose(-1, -2), w, undefined)
        if not (torch.isfinite(L).all() and torch.isfinite(w).all()):
            raise FloatingPointError(
                f"{type(methods[0]).__name__}: non-finite losses or weights at step {t}."
            )
        if t % record_every == 0 or t == steps:
            rec["theta"].append(theta.detach().numpy().copy())
            rec["losses"].append(L.numpy())
            rec["weights"].append(w.numpy())
        if t == steps:
            break
        theta.grad = (w.to(J.dtype).unsqueeze(1) @ J).squeeze(1)
        opt.step()
        if progress is not None:
            progress()
    out = {k: np.stack(v, axis=1) for k, v in rec.items()}
    out["undefined_steps"] = undefined
    return out


def _toy_fingerprint(name: str, kwargs: dict[str, Any], settings: dict[str, Any]) -> str:
    """Hash of what a method's toy trajectories depend on (method, arguments, toy settings)."""
    blob = json.dumps({"method": name, "kwargs": kwargs, **settings}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_toy(
    out_dir: str | Path,
    name: str = "toy",
    methods: list[tuple[str, str, dict[str, Any]]] | None = None,
    steps: int = 700,
    lr: float = 0.05,
    scale: float = 0.1,
    record_every: int = 5,
    show_progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Run each (name, label, kwargs) method from the five standard starts; write and return the
    contents of toy.json: settings, ``methods`` {label: trajectories}, ``failed`` {label: error
    message} and ``reused`` (labels taken from the saved file).

    With ``resume``, a method whose trajectories in an existing ``toy.json`` have the same
    fingerprint (method, arguments, steps, lr, scale, record_every) is reused, not recomputed.
    A method that raises is recorded under ``failed`` (its message) and the others still run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    entries = methods or [(m, m, {}) for m in DEMO_METHODS]
    settings = {
        "steps": steps,
        "lr": lr,
        "scale": scale,
        "record_every": record_every,
        "starts": [list(s) for s in STARTS],
    }
    out = Path(out_dir) / name
    previous: dict[str, Any] = {}
    if resume and (out / "toy.json").is_file():
        try:
            previous = json.loads((out / "toy.json").read_text())
        except json.JSONDecodeError:  # a file cut short: recompute everything
            previous = {}
    fps = {label: _toy_fingerprint(mname, kw, settings) for mname, label, kw in entries}
    saved = {
        label: d
        for label, d in previous.get("methods", {}).items()
        if label in fps and d.get("fingerprint") == fps[label]
    }
    # methods of the saved file that this call does not run (e.g. --methods): kept when the toy
    # settings are the same, so running a few methods again never drops the others
    same = all(previous.get(k) == settings[k] for k in ("steps", "lr", "scale", "record_every"))
    others = {
        label: d for label, d in previous.get("methods", {}).items() if label not in fps and same
    }
    data: dict[str, Any] = dict(
        scale=scale,
        lr=lr,
        steps=steps,
        record_every=record_every,
        starts=settings["starts"],
        pareto_front=pareto_front(scale).tolist(),
        methods={},
        failed={},
        reused=[],
    )
    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, disable=not show_progress, transient=True) as progress:
        for mname, label, kw in entries:
            fp = fps[label]
            if label in saved:
                data["methods"][label] = saved[label]
                data["reused"].append(label)
                continue
            bar = progress.add_task(f"toy: {label}", total=steps)
            t0 = time.perf_counter()
            try:
                tr = trajectories(
                    functools.partial(make_method, mname, kw),
                    steps=steps,
                    lr=lr,
                    scale=scale,
                    record_every=record_every,
                    progress=lambda bar=bar: progress.advance(bar),
                )
            except Exception as e:  # noqa: BLE001 (one method's failure must not lose the others)
                data["failed"][label] = f"{type(e).__name__}: {e}"
                continue
            finally:
                progress.remove_task(bar)
            data["methods"][label] = {
                "fingerprint": fp,
                "theta": tr["theta"].tolist(),
                "losses": tr["losses"].tolist(),
                "weights": tr["weights"].tolist(),
                "undefined_steps": tr["undefined_steps"].tolist(),
                "seconds": time.perf_counter() - t0,
            }
            _save(
                out, {**data, "methods": {**saved, **data["methods"], **others}}
            )  # kept if interrupted
    data["methods"].update(others)
    _save(out, data)
    return data


def _save(out: Path, data: dict[str, Any]) -> None:
    """Write ``out/toy.json`` atomically (a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "toy.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(out / "toy.json")
