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

Extension point (how :class:`~taskgrad.distributed.DistributedStep` is built on GradStep). Every
step decides from one :class:`StepNumbers`: why this process cannot step (None: all finite),
the k losses, and the source's Gram *payload* (here the Gram itself). :meth:`GradStep._combine`
maps it to the numbers every participant decides from — the identity in one process, one
all-reduce of [non-finite flag, k losses, payload] under DDP — *before* the finiteness decision
and the solve, so a process that saw a NaN still takes part and every process skips together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..methods.loss.mean import Mean
from ..sources._graph import as_loss_vector, check_params
from ..sources.blockwise import for_each_block
from ..sources.gram import representation_gram
from ..sources._graph import shared_parameters, task_leaves
from ..sources.objects import FullGram, GramSource, JacobianGram, RepresentationGram, SketchGram, make_source
from .schedule import Periodic, TaskSubsample

__all__ = ["GradStep", "StepNumbers", "StepResult", "TaskOptimizer"]

GRAM_REASON = "Gram matrix of the task gradients"
ADVICE = "Lower the learning rate, check the inputs, or use nonfinite='skip'."


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


@dataclass
class StepNumbers:
    """The numbers one step decides from, before and after :meth:`GradStep._combine`.

    bad: why this process cannot step (None: its losses and payload are finite); after the
    combine, why the step is skipped everywhere. losses: (k,) the losses the method sees.
    payload: what the Gram is made from (None: no Gram this step). n_bad: after the combine,
    how many processes could not step. numel: numbers the combine exchanged.
    """

    bad: str | None
    losses: Tensor
    payload: Tensor | None
    n_bad: int = 0
    numel: int = 0


def _scale_of(scaler: Any, device: torch.device | None = None) -> float:
    """The GradScaler's current scale s (1 without an enabled scaler); creates its state lazily."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    scaler.scale(torch.zeros((), device=device))  # a GradScaler creates its scale tensor lazily, in scale()
    return float(scaler.get_scale())


def _back_off(scaler: Any, device: torch.device) -> None:
    """Lower the GradScaler's scale as it does after a step with non-finite gradients.

    The scaler's state is created lazily by its first ``scale`` call; a first step that is
    already non-finite creates it here, so that ``update`` has a scale to lower.
    """
    if scaler is not None and scaler.is_enabled():
        scaler.scale(torch.zeros((), device=device))
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _count_micro_batch(acc: dict[str, Any], k: int, weight: float | None) -> float:
    """Check one more micro-batch against the accumulation ``acc``, count it; its factor c.

    c = ``weight``, or 1 when no weights are given (the mean 1/M is applied at the end).
    """
    if k != acc["k"]:
        raise ValueError(f"micro-batch has {k} losses but the accumulation started with {acc['k']}.")
    explicit = weight is not None
    if acc["explicit"] is not None and acc["explicit"] != explicit:
        raise ValueError("pass weight= for every micro-batch or for none of them.")
    acc["explicit"] = explicit
    acc["n"] += 1
    return 1.0 if weight is None else float(weight)


def _representation_part(L: Tensor, features: Any, c: float, s: float) -> Tensor:
    """One micro-batch's share c²·Gᵐ of the representation Gram, computed on s·L and unscaled."""
    if features is None:
        raise ValueError("the representation source needs features=z for every micro-batch.")
    return representation_gram(L * s if s != 1.0 else L, features).detach() * (c * c / (s * s))


def _sketch_part(acc: dict[str, Any], source: SketchGram, L: Tensor, c: float, loss_fn: Any, params: Any,
                on_first: Callable[[], None] | None = None) -> Tensor:
    """One micro-batch's share c·JᵐΩ of the sketch, with the same directions Ω in every micro-batch.

    ``on_first`` runs once, when the directions are fixed (the generator state stored in ``acc``).
    """
    named = source.select(L, loss_fn, params)
    gen = source.generator(next(iter(named.values())).device)
    if acc["gen0"] is None:
        if on_first is not None:
            on_first()
        acc["gen0"] = gen.get_state()
    gen.set_state(acc["gen0"])  # the same directions Ω for every micro-batch
    return c * source.jacobian(L, loss_fn=loss_fn, params=params).detach()


class GradStep:
    """One multi-task step: G from ``source`` → w = method(G, L) → backward of Σ vᵢLᵢ.

    Args:
        method: a :class:`~taskgrad.methods.Weighting` (default Mean).
        source: a :class:`~taskgrad.sources.GramSource` or a name ("auto": representation when
            ``features`` are passed, else the blockwise full-parameter Gram).
        period, ema: the :class:`~taskgrad.training.schedule.Periodic` schedule.
        subsample: m tasks per step (a :class:`TaskSubsample` or an int), None for all.
        nonfinite: "skip" (default: report and apply nothing) or "raise".

    Extension points (see the module docstring; DistributedStep overrides them): ``_combine``
    (the numbers every participant decides from), ``_local_payload`` / ``_gram_from`` (this
    process's payload, and the Gram of the combined one), ``_lockstep`` (compute the payload
    even when this process's losses are not finite), ``world_size``, ``_before_step`` /
    ``_check_weights`` (consistency checks), ``_skip_texts`` / ``_result`` (what is reported),
    ``_source_state`` / ``_load_source`` (checkpoint of the source).
    """

    #: compute the payload even when this process's losses are not finite (processes that
    #: combine must issue the same operations and draw the same random directions)
    _lockstep = False

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
            raise TypeError(
                f"method must be a taskgrad Weighting (e.g. taskgrad.MGDA()), got {type(self.method).__name__}."
            )
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

    # ------------------------------------------------------- extension points
    @property
    def world_size(self) -> int:
        """Number of processes that take each step together (1 here)."""
        return 1

    def _combine(self, numbers: StepNumbers, what: str = "step") -> StepNumbers:
        """The numbers every participant decides from (one process: these, with n_bad ∈ {0, 1}).

        Called once per step, before the finiteness decision, by every participant (also one
        whose ``bad`` is set). ``what`` labels the exchange ("step", "accumulated").
        """
        return replace(numbers, n_bad=int(numbers.bad is not None))

    def _local_payload(self, losses: Any, L: Tensor, subset: Tensor, *, features: Any, params: Any, loss_fn: Any,
                       scale: float) -> Tensor:
        """This process's Gram payload: here the m×m Gram of the tasks in ``subset``.

        ``scale``: a GradScaler's scale s; the Gram is computed through s·L and divided by s².
        """
        source = self.source
        assert source is not None
        k = L.shape[0]
        if params is None and not isinstance(source, RepresentationGram) and getattr(source, "params", None) is None \
                and getattr(source, "param_names", None) is None:
            params = shared_parameters(losses)  # from the separate losses, before stacking
        L_sub = L[subset] if subset.numel() < k else L
        if source.uses_graph and scale != 1.0:
            return source.gram(L_sub * scale, features=features, params=params, loss_fn=loss_fn) / (scale * scale)
        if isinstance(source, SketchGram):
            G = source.gram(None, features=features, params=params, loss_fn=loss_fn)
            if G.shape[0] != k:
                raise ValueError(f"loss_fn returns {G.shape[0]} losses but {k} were given.")
            return G[subset][:, subset]
        return source.gram(L_sub, features=features, params=params, loss_fn=loss_fn)

    def _gram_from(self, payload: Tensor, k: int, features: Any) -> Tensor:
        """The Gram from the combined payload (here the payload is the Gram)."""
        return payload

    def _before_step(self) -> None:
        """Called at the start of every step (a consistency check under DDP)."""

    def _check_weights(self, v: Tensor) -> None:
        """Called with the weights about to be applied (a consistency check under DDP)."""

    def _skip_texts(self, why: str, n_bad: int) -> tuple[str, str]:
        """(error message for nonfinite='raise', ``reason`` of the skipped step)."""
        return f"{why} is not finite (NaN or Inf); the step cannot be taken. {ADVICE}", f"non-finite {why}"

    def _result(self, weights: Tensor, gram: Tensor | None, numbers: StepNumbers, local: Tensor, subset: Tensor,
                refreshed: bool, reason: str | None = None) -> StepResult:
        """What the step reports (``local``: this process's losses; ``reason``: why it was skipped)."""
        return StepResult(weights, gram, numbers.losses, subset, refreshed, skipped=reason is not None, reason=reason)

    def _source_state(self) -> dict[str, Any] | None:
        return None if self.source is None else {"type": type(self.source).__name__, "state": self.source.state_dict()}

    def _load_source(self, state: dict[str, Any]) -> None:
        if self.source is None:
            names = {"FullGram": "full", "JacobianGram": "jacobian", "RepresentationGram": "representation",
                     "SketchGram": "sketch"}
            if self._source_spec not in ("auto", names.get(state["type"])):
                raise ValueError(f"checkpoint is for source {state['type']}, not {self._source_spec!r}.")
            self.source = make_source(names[state["type"]], True)
        if state["type"] != type(self.source).__name__:
            raise ValueError(f"checkpoint is for source {state['type']}, not {type(self.source).__name__}.")
        self.source.load_state_dict(state["state"])

    # ----------------------------------------------------------------- helpers
    def _resolve_source(self, features: Any) -> GramSource:
        if self.source is None:
            self.source = make_source(self._source_spec, features is not None)
        return self.source

    def _skip(self, k: int, numbers: StepNumbers, local: Tensor, scaler: Any) -> StepResult:
        message, reason = self._skip_texts(str(numbers.bad), numbers.n_bad)
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        _back_off(scaler, local.device)
        nan = torch.full((k,), float("nan"), dtype=local.dtype, device=local.device)
        return self._result(nan, None, numbers, local, torch.arange(k), refreshed=False, reason=reason)

    def _plan(self, k: int, device: torch.device) -> Tensor | None:
        """The tasks to weight when the weights are due for a refresh (drawn now); None: reuse them."""
        sched = self.schedule
        if not (sched.due() or sched.weights is None or sched.weights.shape[0] > k):
            return None
        return self.subsample.draw(k).to(device) if self.subsample else torch.arange(k, device=device)

    def _decide(
        self, L: Tensor, gram: Tensor | None, subset: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor, bool] | str:
        """Full weight vector v (k,), the Gram seen, the subset, refreshed; or a reason to skip.

        ``subset`` None: reuse the schedule's weights; else w = method(G, L[subset]) on it.
        """
        k = L.shape[0]
        sched = self.schedule
        if subset is not None:
            if gram is not None:
                if not _finite(gram):
                    return GRAM_REASON
                gram = sched.smooth(gram)
            L_sub = L[subset]
            w = self.method(gram=gram, losses=L_sub.to(gram.dtype) if gram is not None else L_sub).detach()
            if not _finite(w):
                return f"weights from {type(self.method).__name__}"
            sched.remember(w, subset)
            refreshed = True
        else:
            gram, refreshed = None, False
        subset = sched.subset.to(L.device)
        scale = self.subsample.scale(k) if self.subsample else 1.0
        v = torch.zeros(k, dtype=sched.weights.dtype, device=L.device)
        v[subset] = sched.weights.to(L.device) * scale
        return v, gram, subset, refreshed

    def _weights(self, L_det: Tensor, gram_of: Any) -> tuple[Tensor, Tensor | None, Tensor, bool] | str:
        """:meth:`_decide` on ``gram_of(subset)`` (one process, no combine)."""
        subset = self._plan(L_det.shape[0], L_det.device)
        gram = gram_of(subset) if subset is not None and "gram" in self.method.needs else None
        return self._decide(L_det, gram, subset)

    def _decide_step(
        self,
        local: Tensor,
        why: str | None,
        payload_of: Callable[[Tensor | None], Tensor | None],
        gram_of: Callable[[Tensor, Tensor | None], Tensor | None],
        scaler: Any,
        what: str = "step",
    ) -> tuple[StepNumbers, Tensor, Tensor | None, Tensor, bool] | StepResult:
        """Plan → ``payload_of(subset)`` → :meth:`_combine` → finiteness → weights.

        ``local``: this process's (k,) losses; ``why``: why it cannot step (None: finite);
        ``subset`` is None when the weights are reused. Returns (combined numbers, v, Gram,
        subset, refreshed), or the skipped step's result (every participant skips together).
        """
        k = local.shape[0]
        subset = payload = None
        if why is None or self._lockstep:
            subset = self._plan(k, local.device)
            payload = payload_of(subset)
            if why is None and payload is not None and not _finite(payload):
                why = GRAM_REASON
        numbers = self._combine(StepNumbers(why, local, payload), what)
        if numbers.n_bad:
            return self._skip(k, numbers, local, scaler)
        gram = None if numbers.payload is None else gram_of(numbers.payload, subset)
        out = self._decide(numbers.losses, gram, subset)
        if isinstance(out, str):
            return self._skip(k, replace(numbers, bad=out, n_bad=self.world_size), local, scaler)
        self._check_weights(out[0])
        return (numbers, *out)

    # ----------------------------------------------------------------- one step
    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scaler: Any = None,
        backward_fn: Callable[[Tensor], None] | None = None,
    ) -> StepResult:
        """Fill ``.grad`` with ∇ Σᵢ vᵢLᵢ (scaled by the GradScaler's scale when ``scaler`` is given).

        Accumulates into existing ``.grad`` as a plain backward does. Non-finite losses, Gram or
        weights: nothing is applied (``skipped=True``; the scaler's scale is lowered).
        ``backward_fn(total)`` replaces ``total.backward()`` (e.g. Lightning's ``manual_backward``).
        """
        if self._acc is not None:
            raise RuntimeError("micro-batches are being accumulated: call backward_accumulated() first.")
        self._before_step()
        L = as_loss_vector(losses)
        L_det = L.detach()
        why = None if _finite(L_det) else "task loss"
        s = 1.0
        if why is None or self._lockstep:
            self._resolve_source(features)
            s = _scale_of(scaler, L.device)

        def payload_of(subset: Tensor | None) -> Tensor | None:
            if subset is None or "gram" not in self.method.needs:
                return None
            return self._local_payload(losses, L, subset, features=features, params=params, loss_fn=loss_fn, scale=s)

        out = self._decide_step(L_det, why, payload_of, lambda p, _: self._gram_from(p, L.shape[0], features), scaler)
        if not isinstance(out, tuple):
            return out  # skipped
        numbers, v, gram, subset, refreshed = out
        total = (v.to(L.dtype) * L).sum()
        if s != 1.0:
            total = total * s
        (backward_fn or Tensor.backward)(total)
        self.schedule.advance()
        return self._result(v, gram, numbers, L_det, subset, refreshed)

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
                         "gram": None, "sketch": None, "gen0": None, "scale": _scale_of(scaler, L.device)}
        acc = self._acc
        c = _count_micro_batch(acc, k, weight)
        if acc["bad"] is not None:
            return
        L_det = L.detach()
        if not _finite(L_det):
            acc["bad"] = "task loss"
            return
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
        if any(r is not None and not _finite(r) for r in acc["sums"]):
            acc["bad"] = "gradient"
            return
        if isinstance(source, RepresentationGram) and "gram" in self.method.needs:
            g = _representation_part(L, features, c, s)
            acc["gram"] = g if acc["gram"] is None else acc["gram"] + g
        elif isinstance(source, SketchGram) and "gram" in self.method.needs:
            S = _sketch_part(acc, source, L, c, loss_fn, params)
            acc["sketch"] = S if acc["sketch"] is None else acc["sketch"] + S

    def backward_accumulated(self, scaler: Any = None) -> StepResult:
        """Weights from the accumulated Gram, then ``.grad`` += Σᵢ vᵢ (accumulated ∇Lᵢ)."""
        acc, self._acc = self._acc, None
        if acc is None:
            raise RuntimeError("nothing accumulated: call accumulate(losses, ...) for each micro-batch first.")
        self._before_step()
        k, n = acc["k"], acc["n"]
        mean = not acc["explicit"]
        L_det = acc["losses"] / n if mean else acc["losses"]
        c = 1.0 / n if mean else 1.0
        s = acc["scale"]
        sums = [None if r is None else r * c for r in acc["sums"]]
        source = self.source

        def gram_of(subset: Tensor | None) -> Tensor | None:
            if subset is None or "gram" not in self.method.needs:
                return None
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

        out = self._decide_step(L_det, acc["bad"], gram_of, lambda G, _: G, scaler, "accumulated")
        if not isinstance(out, tuple):
            return out  # skipped
        numbers, v, gram, subset, refreshed = out
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
        return self._result(v, gram, numbers, L_det, subset, refreshed)

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Method, source and schedule state (a checkpoint cannot be taken mid-accumulation)."""
        if self._acc is not None:
            raise RuntimeError("cannot checkpoint in the middle of an accumulation window.")
        return {
            "method": {"type": type(self.method).__name__, "state": self.method.state_dict()},
            "source": self._source_state(),
            "schedule": self.schedule.state_dict(),
            "subsample": None if self.subsample is None else self.subsample.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a step built with the same configuration."""
        if state["method"]["type"] != type(self.method).__name__:
            raise ValueError(f"checkpoint is for method {state['method']['type']}, not {type(self.method).__name__}.")
        self.method.load_state_dict(state["method"]["state"])
        if state["source"] is not None:
            self._load_source(state["source"])
        self.schedule.load_state_dict(state["schedule"])
        if (state.get("subsample") is None) != (self.subsample is None):
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
