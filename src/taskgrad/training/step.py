"""The step object: method + gradient source + schedule, then one weighted backward.

:class:`GradStep` fills ``.grad`` with ∇ Σᵢ vᵢLᵢ, where v are the method's weights on the tasks
chosen by the schedule; :class:`TaskOptimizer` wraps any ``torch.optim`` optimizer (and an
optional ``GradScaler``) around it. Both checkpoint everything with ``state_dict()``.

Gradient accumulation (:meth:`GradStep.accumulate` per micro-batch, then
:meth:`GradStep.backward_accumulated`) is exact: the update and the Gram equal those of one step
on the whole batch whose losses are Σ_m c_m L^m (c_m = 1/M by default). It keeps per-task
gradient sums: k × P_shared + P_task-specific floats (plus one k × numel block at a time), and
for the representation source the Gram adds over samples, G = Σ_m c_m² G^m; for the sketch the
same directions Ω are reused in every micro-batch, so JΩ = Σ_m c_m J^m Ω.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..methods.core import Mean
from ..sources._graph import as_loss_vector, check_params
from ..sources.blockwise import for_each_block
from ..sources.gram import representation_gram
from ..sources._graph import shared_parameters, task_leaves
from ..sources.objects import FullGram, GramSource, JacobianGram, RepresentationGram, SketchGram, make_source
from .schedule import Periodic, TaskSubsample

__all__ = ["GradStep", "StepResult", "TaskOptimizer"]


@dataclass
class StepResult:
    """What one step did.

    weights: (k,) weights applied to the k losses (0 for tasks not drawn; NaN when skipped).
    gram: the Gram the method saw (m×m over ``subset``), None when reused or not needed.
    losses: (k,) detached losses. subset: indices of the tasks weighted this step.
    refreshed: whether the weights were recomputed (False: reused by the periodic schedule).
    skipped: True when nothing was applied; ``reason`` says why.
    """

    weights: Tensor
    gram: Tensor | None
    losses: Tensor
    subset: Tensor
    refreshed: bool
    skipped: bool = False
    reason: str | None = None


def _scale_of(scaler: Any) -> float:
    if scaler is None or not scaler.is_enabled():
        return 1.0
    scaler.scale(torch.zeros(()))  # a GradScaler creates its scale tensor lazily, in scale()
    return float(scaler.get_scale())


def _back_off(scaler: Any, device: torch.device) -> None:
    """Lower the GradScaler's scale as it does after a step with non-finite gradients.

    The scaler's state is created lazily by its first ``scale`` call; a first step that is
    already non-finite creates it here, so that ``update`` has a scale to lower.
    """
    if scaler is not None and scaler.is_enabled():
        scaler.scale(torch.zeros((), device=device))
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


class GradStep:
    """One multi-task step: G from ``source`` → w = method(G, L) → backward of Σ vᵢLᵢ.

    Args:
        method: a :class:`~taskgrad.methods.Weighting` (default Mean).
        source: a :class:`~taskgrad.sources.GramSource` or a name ("auto": representation when
            ``features`` are passed, else the blockwise full-parameter Gram).
        period, ema: the :class:`~taskgrad.training.schedule.Periodic` schedule.
        subsample: m tasks per step (a :class:`TaskSubsample` or an int), None for all.
        nonfinite: "skip" (default: report and apply nothing) or "raise".
    """

    def __init__(
        self,
        method: Weighting | None = None,
        source: str | GramSource = "auto",
        *,
        period: int = 1,
        ema: float | None = None,
        subsample: TaskSubsample | int | None = None,
        nonfinite: Literal["raise", "skip"] = "skip",
    ) -> None:
        self.method = Mean() if method is None else method
        if not isinstance(self.method, Weighting):
            raise TypeError(f"method must be a taskgrad Weighting, got {type(self.method).__name__}.")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}.")
        self._source_spec = source
        self.source: GramSource | None = source if isinstance(source, GramSource) else None
        if isinstance(source, str):
            make_source(source, True)  # validate the name now
        self.schedule = Periodic(period, ema)
        self.subsample = TaskSubsample(subsample) if isinstance(subsample, int) else subsample
        self.nonfinite = nonfinite
        self._acc: dict[str, Any] | None = None

    # ----------------------------------------------------------------- helpers
    def _resolve_source(self, features: Any) -> GramSource:
        if self.source is None:
            self.source = make_source(self._source_spec, features is not None)
        return self.source

    def _skip(self, k: int, losses: Tensor, why: str, scaler: Any) -> StepResult:
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"{why} is not finite (NaN or Inf); the step cannot be taken. Lower the learning rate, "
                "check the inputs, or use nonfinite='skip'."
            )
        _back_off(scaler, losses.device)
        nan = torch.full((k,), float("nan"), dtype=losses.dtype, device=losses.device)
        return StepResult(nan, None, losses, torch.arange(k), refreshed=False, skipped=True, reason=f"non-finite {why}")

    def _weights(self, L_det: Tensor, gram_of: Any) -> tuple[Tensor, Tensor | None, Tensor, bool] | str:
        """Full weight vector v (k,), the Gram seen, the subset, refreshed; or a reason to skip."""
        k = L_det.shape[0]
        sched = self.schedule
        if sched.due() or sched.weights is None or sched.weights.shape[0] > k:
            subset = self.subsample.draw(k).to(L_det.device) if self.subsample else torch.arange(k, device=L_det.device)
            gram = None
            L_sub = L_det[subset]
            if "gram" in self.method.needs:
                gram = gram_of(subset)
                if not bool(torch.isfinite(gram).all()):
                    return "Gram matrix of the task gradients"
                gram = sched.smooth(gram)
            w = self.method(gram=gram, losses=L_sub.to(gram.dtype) if gram is not None else L_sub).detach()
            if not bool(torch.isfinite(w).all()):
                return f"weights from {type(self.method).__name__}"
            sched.remember(w, subset)
            refreshed = True
        else:
            gram, refreshed = None, False
        subset = sched.subset.to(L_det.device)
        scale = self.subsample.scale(k) if self.subsample else 1.0
        v = torch.zeros(k, dtype=sched.weights.dtype, device=L_det.device)
        v[subset] = sched.weights.to(L_det.device) * scale
        return v, gram, subset, refreshed

    # ----------------------------------------------------------------- one step
    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scaler: Any = None,
    ) -> StepResult:
        """Fill ``.grad`` with ∇ Σᵢ vᵢLᵢ (scaled by the GradScaler's scale when ``scaler`` is given).

        Accumulates into existing ``.grad`` as a plain backward does. Non-finite losses, Gram or
        weights: nothing is applied (``skipped=True``; the scaler's scale is lowered).
        """
        if self._acc is not None:
            raise RuntimeError("micro-batches are being accumulated: call backward_accumulated() first.")
        L = as_loss_vector(losses)
        L_det = L.detach()
        k = L.shape[0]
        if not bool(torch.isfinite(L_det).all()):
            return self._skip(k, L_det, "task loss", scaler)
        source = self._resolve_source(features)
        s = _scale_of(scaler)
        if params is None and not isinstance(source, RepresentationGram) and getattr(source, "params", None) is None \
                and getattr(source, "param_names", None) is None and "gram" in self.method.needs:
            params = shared_parameters(losses)  # from the separate losses, before stacking

        def gram_of(subset: Tensor) -> Tensor:
            L_sub = L[subset] if subset.numel() < k else L
            if source.uses_graph and s != 1.0:
                return source.gram(L_sub * s, features=features, params=params, loss_fn=loss_fn) / (s * s)
            if isinstance(source, SketchGram):
                G = source.gram(None, features=features, params=params, loss_fn=loss_fn)
                if G.shape[0] != k:
                    raise ValueError(f"loss_fn returns {G.shape[0]} losses but {k} were given.")
                return G[subset][:, subset]
            return source.gram(L_sub, features=features, params=params, loss_fn=loss_fn)

        out = self._weights(L_det, gram_of)
        if isinstance(out, str):
            return self._skip(k, L_det, out, scaler)
        v, gram, subset, refreshed = out
        total = (v.to(L.dtype) * L).sum()
        if scaler is not None and scaler.is_enabled():
            total = scaler.scale(total)  # multiplies by s (and initialises the scaler lazily)
        total.backward()
        self.schedule.advance()
        return StepResult(v, gram, L_det, subset, refreshed)

    # ----------------------------------------------------------- accumulation
    def accumulate(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        weight: float | None = None,
        scaler: Any = None,
    ) -> None:
        """Add one micro-batch (its losses weighted by ``weight``; None: 1/M for M micro-batches).

        Stores this micro-batch's per-task gradients and Gram contributions; touches no ``.grad``.
        """
        L = as_loss_vector(losses)
        k = L.shape[0]
        source = self._resolve_source(features)
        if self._acc is None:
            per_task = task_leaves(losses)
            order: list[Tensor] = []
            tasks: dict[int, list[int]] = {}
            for i, leaves in enumerate(per_task):
                for p in leaves:
                    if id(p) not in tasks:
                        tasks[id(p)] = []
                        order.append(p)
                    tasks[id(p)].append(i)
            self._acc = {"k": k, "params": order, "tasks": [tasks[id(p)] for p in order], "sums": [None] * len(order),
                         "n": 0, "explicit": None, "bad": None, "losses": torch.zeros_like(L.detach()),
                         "gram": None, "sketch": None, "gen0": None, "scale": _scale_of(scaler)}
        acc = self._acc
        if k != acc["k"]:
            raise ValueError(f"micro-batch has {k} losses but the accumulation started with {acc['k']}.")
        explicit = weight is not None
        if acc["explicit"] is not None and acc["explicit"] != explicit:
            raise ValueError("pass weight= for every micro-batch or for none of them.")
        acc["explicit"] = explicit
        acc["n"] += 1
        if acc["bad"] is not None:
            return
        L_det = L.detach()
        if not bool(torch.isfinite(L_det).all()):
            acc["bad"] = "task loss"
            return
        c = 1.0 if weight is None else float(weight)
        s = acc["scale"]
        acc["losses"] = acc["losses"] + c * L_det
        index = {id(p): j for j, p in enumerate(acc["params"])}
        local = [p for p in acc["params"] if p.requires_grad]
        Ls = L * s if s != 1.0 else L

        def consume(j: int, rows: Tensor) -> None:
            gj = index[id(local[j])]
            t = acc["tasks"][gj]
            rows = c * (rows[t[0]] if len(t) == 1 else rows)
            acc["sums"][gj] = rows if acc["sums"][gj] is None else acc["sums"][gj] + rows

        for_each_block(Ls, local, consume)
        if any(r is not None and not bool(torch.isfinite(r).all()) for r in acc["sums"]):
            acc["bad"] = "gradient"
            return
        if isinstance(source, RepresentationGram) and "gram" in self.method.needs:
            if features is None:
                raise ValueError("RepresentationGram needs features=z for every micro-batch.")
            g = representation_gram(Ls, features) * (c * c / (s * s))
            acc["gram"] = g if acc["gram"] is None else acc["gram"] + g
        elif isinstance(source, SketchGram) and "gram" in self.method.needs:
            named = source.select(L, loss_fn, params)
            gen = source.generator(next(iter(named.values())).device)
            if acc["gen0"] is None:
                acc["gen0"] = gen.get_state()
            gen.set_state(acc["gen0"])  # the same directions Ω for every micro-batch
            S = c * source.jacobian(L, loss_fn=loss_fn, params=params)
            acc["sketch"] = S if acc["sketch"] is None else acc["sketch"] + S

    def backward_accumulated(self, scaler: Any = None) -> StepResult:
        """Weights from the accumulated Gram, then ``.grad`` += Σᵢ vᵢ (accumulated ∇Lᵢ)."""
        acc, self._acc = self._acc, None
        if acc is None:
            raise RuntimeError("nothing accumulated: call accumulate(losses, ...) for each micro-batch first.")
        k, n = acc["k"], acc["n"]
        mean = not acc["explicit"]
        L_det = acc["losses"] / n if mean else acc["losses"]
        if acc["bad"] is not None:
            return self._skip(k, L_det, acc["bad"], scaler)
        c = 1.0 / n if mean else 1.0
        s = acc["scale"]
        sums = [None if r is None else r * c for r in acc["sums"]]
        source = self.source

        def gram_of(subset: Tensor) -> Tensor:
            if isinstance(source, RepresentationGram):
                G = acc["gram"] * (c * c)
            elif isinstance(source, SketchGram):
                S = acc["sketch"] * c
                G = S @ S.T / source.r
            elif isinstance(source, (FullGram, JacobianGram)):
                own = source.params
                ids = None if own is None else {id(p) for p in check_params(own)}
                G = torch.zeros(k, k, dtype=torch.float64 if acc["params"][0].dtype == torch.float64 else torch.float32,
                                device=L_det.device)
                for p, t, r in zip(acc["params"], acc["tasks"], sums):
                    if r is None or (ids is None and len(t) < 2) or (ids is not None and id(p) not in ids):
                        continue
                    if len(t) > 1:
                        rows = r.reshape(k, -1).to(G.dtype)
                    else:
                        rows = torch.zeros(k, r.numel(), dtype=G.dtype, device=G.device)
                        rows[t[0]] = r.reshape(-1).to(G.dtype)
                    G = G + rows @ rows.T
                G = G / (s * s)
            else:
                raise TypeError(f"{type(source).__name__} does not support gradient accumulation.")
            G = 0.5 * (G + G.T)
            return G[subset][:, subset]

        out = self._weights(L_det, gram_of)
        if isinstance(out, str):
            return self._skip(k, L_det, out, scaler)
        v, gram, subset, refreshed = out
        for p, t, r in zip(acc["params"], acc["tasks"], sums):
            if r is None:
                continue
            if len(t) == 1:
                g = (v[t[0]].to(r.dtype) * r).reshape(p.shape)
            else:
                g = (v.to(r.dtype) @ r.reshape(k, -1)).reshape(p.shape)
            g = g.to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
        self.schedule.advance()
        return StepResult(v, gram, L_det, subset, refreshed)

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Method, source and schedule state (a checkpoint cannot be taken mid-accumulation)."""
        if self._acc is not None:
            raise RuntimeError("cannot checkpoint in the middle of an accumulation window.")
        source = self.source if self.source is not None else None
        return {
            "method": {"type": type(self.method).__name__, "state": self.method.state_dict()},
            "source": None if source is None else {"type": type(source).__name__, "state": source.state_dict()},
            "schedule": self.schedule.state_dict(),
            "subsample": None if self.subsample is None else self.subsample.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a GradStep built with the same configuration."""
        if state["method"]["type"] != type(self.method).__name__:
            raise ValueError(f"checkpoint is for method {state['method']['type']}, not {type(self.method).__name__}.")
        self.method.load_state_dict(state["method"]["state"])
        if state["source"] is not None:
            if self.source is None:
                names = {"FullGram": "full", "JacobianGram": "jacobian", "RepresentationGram": "representation",
                         "SketchGram": "sketch"}
                if self._source_spec not in ("auto", names.get(state["source"]["type"])):
                    raise ValueError(f"checkpoint is for source {state['source']['type']}, not {self._source_spec!r}.")
                self.source = make_source(names[state["source"]["type"]], True)
            if state["source"]["type"] != type(self.source).__name__:
                raise ValueError(f"checkpoint is for source {state['source']['type']}, not {type(self.source).__name__}.")
            self.source.load_state_dict(state["source"]["state"])
        self.schedule.load_state_dict(state["schedule"])
        if (state["subsample"] is None) != (self.subsample is None):
            raise ValueError("checkpoint and this GradStep disagree on task sub-sampling.")
        if self.subsample is not None:
            self.subsample.load_state_dict(state["subsample"])


class TaskOptimizer:
    """Any torch.optim optimizer driven by a :class:`GradStep` (and optionally a GradScaler).

    ``opt.step(losses, features=z)`` zeroes the gradients, does the weighted backward and the
    optimizer step; with a scaler, ``scaler.step``/``scaler.update`` (a step whose gradients are
    not finite is skipped by the scaler and reported as ``skipped``). For micro-batches call
    ``opt.accumulate(losses, ...)`` for each, then ``opt.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, step: GradStep | None = None, *, scaler: Any = None,
                 **gradstep_kwargs: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        if step is not None and gradstep_kwargs:
            raise ValueError("pass either a GradStep or GradStep keyword arguments, not both.")
        self.optimizer = optimizer
        self.gradstep = step if step is not None else GradStep(**gradstep_kwargs)
        self.scaler = scaler
        self.n_skipped = 0
        self._accumulating = False

    def accumulate(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> None:
        """Add a micro-batch (see :meth:`GradStep.accumulate`)."""
        self._accumulating = True
        self.gradstep.accumulate(losses, scaler=self.scaler, **kwargs)

    def step(self, losses: Sequence[Tensor] | Tensor | None = None, **kwargs: Any) -> StepResult:
        """One optimizer step from ``losses`` (or from the accumulated micro-batches)."""
        self.optimizer.zero_grad(set_to_none=True)
        if losses is None:
            if not self._accumulating:
                raise ValueError("step() without losses needs micro-batches added with accumulate() first.")
            self._accumulating = False
            res = self.gradstep.backward_accumulated(scaler=self.scaler)
        else:
            if self._accumulating:
                raise RuntimeError("micro-batches are being accumulated: call step() without losses.")
            res = self.gradstep.backward(losses, scaler=self.scaler, **kwargs)
        if res.skipped:
            self.n_skipped += 1
            return res
        if self.scaler is not None and self.scaler.is_enabled():
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < before:
                self.n_skipped += 1
                res.skipped, res.reason = True, "non-finite gradients (skipped by the GradScaler)"
        else:
            self.optimizer.step()
        return res

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, GradStep (method, source, schedule) and scaler state."""
        return {"optimizer": self.optimizer.state_dict(), "gradstep": self.gradstep.state_dict(),
                "scaler": None if self.scaler is None else self.scaler.state_dict(), "n_skipped": self.n_skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradstep.load_state_dict(state["gradstep"])
        if state["scaler"] is not None:
            if self.scaler is None:
                raise ValueError("checkpoint has GradScaler state but this TaskOptimizer has no scaler.")
            self.scaler.load_state_dict(state["scaler"])
        self.n_skipped = int(state["n_skipped"])
