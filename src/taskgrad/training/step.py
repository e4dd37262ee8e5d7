"""The step object: method + gradient source + schedule + reducer, then one weighted update.

Every entry point runs through :class:`GradStep`: ``taskgrad.backward`` is one call of it,
:class:`TaskOptimizer` wraps a ``torch.optim`` optimizer around it, and
:class:`~taskgrad.distributed.DistributedStep` is a GradStep whose injected reducer is an
all-reduce. So the defaults (non-finite values, undefined methods, the source), the result type
(:class:`StepResult`) and the gradients they write are the same everywhere.

One step: losses → the tasks to weight (schedule, sub-sampling) → the source's contribution
(:class:`~taskgrad.sources.Part`: a payload that adds over micro-batches and processes, and the
per-task gradients when the source computed them) → the reducer → finiteness → the Gram →
weights (with the undefined-method policy, ``normalize``) → the update (per-task gradients or
one weighted backward; the head-gradient convention; ``max_norm`` clipping).

Weight scales. Methods do not share a scale (sums of the weights on a random 4-task Gram):
Mean, MGDA, MGDA-UB, IMTL-G, DualProj, RLW and the primary/auxiliary family sum to 1, CAGrad,
UPGrad and Aligned-MTL to about 1 (0.7-1.5); loss weightings such as DWA and Uncertainty
Weighting, and the projection methods PCGrad and GradVac, sum to about k or more (the size of the
summed loss); Nash-MTL and FairGrad solve Gw = 1/w, so their weights scale as 1/‖g‖ (large for
small gradients). A learning rate tuned for one family is therefore off by up to a factor k or
more for another. ``normalize="sum"`` rescales the weights to sum to 1 and
``normalize="mean-norm"`` rescales the update to the norm of the mean gradient ‖(1/k)Σ gᵢ‖ (it
computes a Gram), so one learning rate fits every method.

Gradient accumulation (:meth:`GradStep.accumulate` per micro-batch, then
:meth:`GradStep.backward_accumulated`) is exact: the update and the Gram equal those of one step
on the whole batch whose losses are Σ_m c_m L^m (c_m = 1/M by default). It keeps every task's
gradient (a :class:`~taskgrad.sources.capture.TaskGrads`) and the source's payload summed with
c^power (representation: the Gram adds over samples, c²Gᵐ; sketch: the same directions Ω in
every micro-batch, c·JᵐΩ; full: from the summed per-task gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor
from torch.amp import GradScaler

from ..methods import UndefinedMethodError, Weighting
from ..methods.loss.mean import Mean
from ..sources import (
    GramSource,
    LossSet,
    Part,
    RepresentationGram,
    TaskGrads,
    check_params,
    make_source,
)
from ..sources.capture import gram_dtype, task_gradients
from .reduce import LocalReducer, Reducer, StepNumbers
from .schedule import Periodic, TaskSubsample

__all__ = ["Accumulation", "GradStep", "StepNumbers", "StepResult", "TaskOptimizer"]

GRAM_REASON = "Gram matrix of the task gradients"
HEADS = ("weighted", "unweighted")
CLIP_SCOPES = ("all", "shared")
NORMALIZE = (None, "sum", "mean-norm")


@dataclass(repr=False)
class StepResult:
    """What one step did (the one result type of every entry point).

    weights: (k,) weights applied to the k losses (0 for tasks not drawn; NaN when skipped).
    gram: the Gram the method saw (m×m over ``subset``), None when reused or not needed.
    losses: (k,) detached losses (averaged over processes under DDP); local_losses: this
    process's. subset: indices of the tasks weighted this step. refreshed: whether the weights
    were recomputed (False: reused by the periodic schedule). skipped: nothing was applied;
    ``reason`` says why (naming the task when one is at fault). fallback: the name of the
    Weighting used instead of an undefined method (``on_undefined=<Weighting>``), and
    ``reason`` says why. grad_norm: norm of the update before ``max_norm`` clipping (None when
    not clipping); clipped: whether it was scaled down. bad_ranks / numel_reduced: processes
    that saw a non-finite value; numbers this process exchanged for the step.
    """

    weights: Tensor
    gram: Tensor | None
    losses: Tensor
    subset: Tensor | None = None
    refreshed: bool = True
    skipped: bool = False
    reason: str | None = None
    fallback: str | None = None
    grad_norm: float | None = None
    clipped: bool = False
    local_losses: Tensor | None = None
    bad_ranks: int = 0
    numel_reduced: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        w = ", ".join(f"{x:.4g}" for x in self.weights.detach().reshape(-1).tolist()[:8])
        more = ", …" if self.weights.numel() > 8 else ""
        parts = [f"weights=[{w}{more}]", f"skipped={self.skipped}"]
        if self.reason is not None:
            parts.append(f"reason={self.reason!r}")
        if self.fallback is not None:
            parts.append(f"fallback={self.fallback!r}")
        if self.gram is not None:
            parts.append(
                f"gram=<{'×'.join(map(str, self.gram.shape))} "
                f"{str(self.gram.dtype).replace('torch.', '')}>"
            )
        if not self.refreshed and not self.skipped:
            parts.append("refreshed=False")
        if self.clipped:
            parts.append(f"clipped from norm {self.grad_norm:.4g}")
        return f"StepResult({', '.join(parts)})"


@dataclass
class Accumulation:
    """The state of an accumulation window (typed: one field per fact).

    k: tasks; n: micro-batches counted; explicit: whether weight= was given (None: not yet
    known); bad: why the window cannot step (None: finite so far); losses: Σ c_m Lᵐ (k,);
    grads: Σ c_m (per-task gradients); payload: Σ c_m^power (source payload), for sources whose
    Gram is not a function of ``grads``; directions: the sketch's generator state, fixed at
    the first micro-batch; scale: the GradScaler's scale for the window; present_weight: Σ c_m
    over the micro-batches where each task is present (None until a micro-batch passes present=).
    """

    k: int
    losses: Tensor
    scale: float = 1.0
    n: int = 0
    explicit: bool | None = None
    bad: str | None = None
    grads: TaskGrads | None = None
    payload: Tensor | None = None
    directions: Tensor | None = None
    present_weight: Tensor | None = None

    def count(self, k: int, weight: float | None) -> float:
        """Check one more micro-batch against the window and count it; its factor c (1 without
        weight=, the mean 1/M being applied at the end).
        """
        if k != self.k:
            raise ValueError(
                f"micro-batch has {k} losses but the accumulation started with {self.k}."
            )
        explicit = weight is not None
        if self.explicit is not None and self.explicit != explicit:
            raise ValueError("pass weight= for every micro-batch or for none of them.")
        self.explicit = explicit
        self.n += 1
        return 1.0 if weight is None else float(weight)

    @property
    def factor(self) -> float:
        """The factor applied at the end: 1/M for M micro-batches without weight=, else 1."""
        return 1.0 if self.explicit else 1.0 / self.n


def scale_of(scaler: GradScaler | None, device: torch.device | None = None) -> float:
    """The GradScaler's current scale s (1 without an enabled scaler); creates its state lazily."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    scaler.scale(
        torch.zeros((), device=device)
    )  # a GradScaler creates its scale tensor lazily, in scale()
    return float(scaler.get_scale())


def back_off(scaler: GradScaler | None, device: torch.device) -> None:
    """Lower the GradScaler's scale as it does after a step with non-finite gradients."""
    if scaler is not None and scaler.is_enabled():
        scaler.scale(torch.zeros((), device=device))
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite."""
    return bool(torch.isfinite(t).all())


#: methods that already scale their own weights to their ``max_norm`` (the step must not clip again)
SELF_CLIPPING = frozenset({"NashMTL", "AuxiNash"})


def _method_max_norm(method: Weighting) -> float | None:
    """The method's ``max_norm`` when the step is to apply it (None: no default clipping)."""
    if type(method).__name__ in SELF_CLIPPING or getattr(method, "clips_itself", False):
        return None
    value = getattr(method, "max_norm", None)
    return None if value is None or value == 0 else value


def _task_label(i: int, names: Sequence[str] | None) -> str:
    return f"task {i} ({names[i]!r})" if names is not None and i < len(names) else f"task {i}"


def _add_grad(p: Tensor, g: Tensor, fresh: bool = False) -> None:
    """``p.grad += g``; ``fresh``: g is a new tensor no one else holds, kept without a copy."""
    g = g.to(p.dtype)
    if p.grad is None:
        p.grad = g if fresh else g.clone()
    else:
        p.grad = p.grad + g


class GradStep:
    """One multi-task step: G from ``source`` → w = method(G, L) → the update Σᵢ vᵢ∇Lᵢ.

    Args:
        method: a :class:`~taskgrad.methods.Weighting` (default Mean).
        source: a :class:`~taskgrad.sources.GramSource` or a name ("auto": the representation
            source when ``features`` are passed, else the full-parameter source :class:`FullGram`).
        period, ema: the :class:`~taskgrad.training.schedule.Periodic` schedule.
        subsample: m tasks per step (a :class:`TaskSubsample` or an int), None for all.
        nonfinite: what a step with a NaN/Inf loss or gradient does. "raise"
            (FloatingPointError naming the task), "skip" (apply nothing, report ``skipped=True``
            and the reason; a GradScaler's scale is lowered), or "auto" (default: "skip" when the
            call is given an enabled GradScaler, whose overflow steps are expected and skipped as
            GradScaler itself does, else "raise"). Every entry point has this default.
        on_undefined: what to do when the method raises
            :class:`~taskgrad.methods.UndefinedMethodError` (mathematically undefined for this
            Gram, e.g. Nash-MTL with 0 in the convex hull): "skip" (default, what a week-long job
            wants: the step is skipped and counted, training goes on), "raise", or a Weighting
            (e.g. ``taskgrad.MGDA()``) used for that step instead (``result.fallback`` names it).
        heads: "weighted" (every parameter gets Σᵢ vᵢ∇Lᵢ, as ``sum(w_i * L_i).backward()``)
            or "unweighted": a parameter reached by one task only (its head) gets that task's
            unweighted ∇Lᵢ, the shared ones Σᵢ vᵢ∇Lᵢ (the official CAGrad/FairGrad, LibMTL).
            "Reached" is read from the autograd graph: an op that joins the heads' outputs before
            the losses pick their column (``torch.cat`` of the heads, then ``pred[:, i]``) makes
            every head reachable from every loss, so every head then counts as shared.
            None (default): the method's ``head_convention`` attribute when it sets one (e.g.
            Aligned-MTL's ``scale_decoder_grad``), else "weighted".
        max_norm: clip the update to this norm (None: no clipping; default: the method's own
            ``max_norm`` attribute when it has one and leaves the clipping to the step, as FairGrad
            and FAMO do, then over the shared parameters; Nash-MTL scales its own weights and is
            not clipped again; a method's ``max_norm_scope`` attribute, when present, sets
            ``clip``). clip: "all" (the norm over every parameter
            the step writes) or "shared" (only the shared parameters' gradient is measured and
            scaled, as Nash-MTL's reference does).
        normalize: None (the method's own scale), "sum" (weights sum to 1) or "mean-norm" (the
            update has the norm of the mean gradient); see the module docstring.
        names: task names, used in the reasons of skipped steps.
        reducer: how numbers are combined across processes (default: one process).
    """

    def __init__(
        self,
        method: Weighting | None = None,
        source: str | GramSource = "auto",
        *,
        period: int = 1,
        ema: float | None = None,
        subsample: TaskSubsample | int | None = None,
        nonfinite: Literal["auto", "raise", "skip"] = "auto",
        on_undefined: Literal["raise", "skip"] | Weighting = "skip",
        heads: Literal["weighted", "unweighted"] | None = None,
        max_norm: float | None = None,
        clip: Literal["all", "shared"] = "all",
        normalize: Literal["sum", "mean-norm"] | None = None,
        names: Sequence[str] | None = None,
        reducer: Reducer | None = None,
    ) -> None:
        self.method = Mean() if method is None else method
        if heads is None:
            heads = getattr(self.method, "head_convention", None) or "weighted"
        if not isinstance(self.method, Weighting):
            raise TypeError(
                "method must be a taskgrad Weighting (e.g. taskgrad.MGDA()), got "
                f"{type(self.method).__name__}."
            )
        if nonfinite not in ("auto", "raise", "skip"):
            raise ValueError(f"nonfinite must be 'auto', 'raise' or 'skip', got {nonfinite!r}.")
        if not (on_undefined in ("raise", "skip") or isinstance(on_undefined, Weighting)):
            raise ValueError(
                "on_undefined must be 'raise', 'skip' or a taskgrad Weighting (e.g. "
                f"taskgrad.MGDA()), got {on_undefined!r}."
            )
        if heads not in HEADS:
            raise ValueError(f"heads must be 'weighted' or 'unweighted', got {heads!r}.")
        if clip not in CLIP_SCOPES:
            raise ValueError(f"clip must be 'all' or 'shared', got {clip!r}.")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be None, 'sum' or 'mean-norm', got {normalize!r}.")
        if max_norm is None:
            max_norm = _method_max_norm(self.method)
            # a method's own max_norm clips the shared-parameter gradient (FairGrad's and FAMO's
            # reference code) unless the method names another scope
            clip = (
                getattr(self.method, "max_norm_scope", "shared") if max_norm is not None else clip
            )
        if max_norm is not None and not (
            isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0
        ):
            raise ValueError(
                f"max_norm must be a positive finite number or None, got {max_norm!r}."
            )
        self._source_spec = source
        self.source: GramSource | None = source if isinstance(source, GramSource) else None
        if isinstance(source, str):
            make_source(source, True)  # validate the name now
        self.schedule = Periodic(period, ema)
        self.subsample = TaskSubsample(subsample) if isinstance(subsample, int) else subsample
        self.nonfinite = nonfinite
        self.on_undefined = on_undefined
        self.heads = heads
        self.max_norm = None if max_norm is None else float(max_norm)
        self.clip = clip
        self.normalize = normalize
        self.names = None if names is None else list(names)
        self.reducer = reducer if reducer is not None else LocalReducer()
        if self.source is not None:
            self.reducer.attach(self.source)
        self.n_skipped = 0
        self.n_fallback = 0
        self._acc: Accumulation | None = None

    @property
    def world_size(self) -> int:
        """Number of processes that take each step together."""
        return self.reducer.world_size

    @property
    def needs_gram(self) -> bool:
        """Whether a step computes the Gram (the method needs it, or normalize="mean-norm")."""
        return "gram" in self.method.needs or self.normalize == "mean-norm"

    # ----------------------------------------------------------------- helpers
    def _resolve_source(self, features: Any) -> GramSource:
        if self.source is None:
            self.source = make_source(self._source_spec, features is not None)
            self.reducer.attach(self.source)
        return self.source

    def _result(
        self,
        weights: Tensor,
        gram: Tensor | None,
        numbers: StepNumbers,
        local: Tensor,
        subset: Tensor,
        refreshed: bool,
        reason: str | None = None,
        **extra: Any,
    ) -> StepResult:
        return StepResult(
            weights,
            gram,
            numbers.losses.to(local.dtype),
            subset,
            refreshed,
            skipped=reason is not None and not extra.get("fallback"),
            reason=reason,
            local_losses=local,
            bad_ranks=numbers.n_bad,
            numel_reduced=numbers.numel,
            **extra,
        )

    def _skip(
        self,
        k: int,
        numbers: StepNumbers,
        local: Tensor,
        scaler: GradScaler | None,
        reason: str | None = None,
    ) -> StepResult:
        message, default_reason = self.reducer.skip_texts(str(numbers.bad), numbers.n_bad)
        if reason is None and self._nonfinite_mode(scaler) == "raise":
            raise FloatingPointError(message)
        back_off(scaler, local.device)
        self.n_skipped += 1
        nan = torch.full((k,), float("nan"), dtype=local.dtype, device=local.device)
        return self._result(
            nan,
            None,
            numbers,
            local,
            torch.arange(k),
            refreshed=False,
            reason=reason or default_reason,
        )

    def _nonfinite_mode(self, scaler: GradScaler | None) -> str:
        """This call's mode, "raise" or "skip" ("auto" skips only under an enabled GradScaler)."""
        if self.nonfinite != "auto":
            return self.nonfinite
        return "skip" if scaler is not None and scaler.is_enabled() else "raise"

    def _nonfinite_loss(self, L: Tensor) -> str | None:
        bad = [i for i, x in enumerate(L.tolist()) if not math.isfinite(x)]
        if not bad:
            return None
        return "task loss of " + ", ".join(_task_label(i, self.names) for i in bad)

    def _plan(self, k: int, device: torch.device) -> Tensor | None:
        """The tasks to weight when the weights are due for a refresh (drawn now); None: reuse
        them.
        """
        sched = self.schedule
        if not (sched.due() or sched.weights is None or sched.weights.shape[0] > k):
            return None
        return (
            self.subsample.draw(k).to(device) if self.subsample else torch.arange(k, device=device)
        )

    def _solve(
        self, gram: Tensor | None, L_sub: Tensor
    ) -> tuple[Tensor, str | None, str | None] | str:
        """(weights, fallback name, reason) from the method, with the undefined-method policy; or
        a reason to skip.
        """
        losses = L_sub.to(gram.dtype) if gram is not None else L_sub
        try:
            mine = gram if "gram" in self.method.needs else None
            return self.method(gram=mine, losses=losses).detach(), None, None
        except UndefinedMethodError as err:
            why = f"{type(self.method).__name__} is undefined for this step: {err}"
            if self.on_undefined == "raise":
                raise
            if self.on_undefined == "skip":
                return why
            fb = self.on_undefined
            assert isinstance(fb, Weighting)
            g = gram if "gram" in fb.needs else None
            if (
                "gram" in fb.needs and gram is None
            ):  # only when neither the method nor normalize needs one
                raise ValueError(
                    f"the fallback {type(fb).__name__} needs a Gram but "
                    f"{type(self.method).__name__} does not; "
                    "pick a fallback that needs only what the method needs (e.g. taskgrad.Mean())."
                ) from err
            return fb(gram=g, losses=losses).detach(), type(fb).__name__, why

    def _normalized(self, w: Tensor, gram: Tensor | None) -> Tensor:
        if self.normalize == "sum":
            s = w.sum()
            return w / s if float(s) != 0.0 else w
        if self.normalize == "mean-norm":
            if gram is None:
                raise ValueError(
                    "normalize='mean-norm' needs a Gram: use a method that needs one, or "
                    "normalize='sum'."
                )
            m = gram.shape[0]
            ref = torch.ones(m, dtype=gram.dtype, device=gram.device) / m
            num = float(ref @ gram @ ref)
            den = float(w.to(gram.dtype) @ gram @ w.to(gram.dtype))
            return w * math.sqrt(num / den) if den > 0 else w
        return w

    def _decide(
        self, L: Tensor, gram: Tensor | None, subset: Tensor | None
    ) -> tuple[Any, ...] | str:
        """(v (k,), Gram seen, subset, refreshed, fallback, reason) or a reason to skip."""
        k = L.shape[0]
        sched = self.schedule
        fallback = reason = None
        if subset is not None:
            if gram is not None:
                if not finite(gram):
                    return GRAM_REASON
                gram = sched.smooth(gram)
            out = self._solve(gram, L[subset])
            if isinstance(out, str):
                return out
            w, fallback, reason = out
            if not finite(w):
                return f"weights from {fallback or type(self.method).__name__}"
            w = self._normalized(w, gram)
            sched.remember(w, subset)
            refreshed = True
        else:
            gram, refreshed = None, False
        assert sched.subset is not None and sched.weights is not None  # set by a refresh
        subset = sched.subset.to(L.device)
        scale = self.subsample.scale(k) if self.subsample else 1.0
        v = torch.zeros(k, dtype=sched.weights.dtype, device=L.device)
        v[subset] = sched.weights.to(L.device) * scale
        return v, gram, subset, refreshed, fallback, reason

    def _decide_step(
        self,
        local: Tensor,
        why: str | None,
        payload_of: Callable[[Tensor | None], Tensor | None],
        gram_of: Callable[[Tensor, Tensor | None], Tensor | None],
        scaler: GradScaler | None,
        what: str = "step",
    ) -> StepResult | tuple[Any, ...]:
        """Plan → payload → combine → finiteness → weights; or the skipped step's result."""
        k = local.shape[0]
        subset = payload = None
        if why is None or self.reducer.lockstep:
            subset = self._plan(k, local.device)
            payload = payload_of(subset)
            if why is None and payload is not None and not finite(payload):
                why = GRAM_REASON
        numbers = self.reducer.combine(StepNumbers(why, local, payload), what)
        if numbers.n_bad:
            return self._skip(k, numbers, local, scaler)
        gram = (
            None if numbers.payload is None or subset is None else gram_of(numbers.payload, subset)
        )
        out = self._decide(numbers.losses, gram, subset)
        if isinstance(out, str):
            if out == GRAM_REASON or out.startswith("weights from"):
                return self._skip(
                    k, replace(numbers, bad=out, n_bad=self.world_size), local, scaler
                )
            return self._skip(k, numbers, local, scaler, reason=out)
        self.reducer.check_weights(out[0])
        if out[4] is not None:
            self.n_fallback += 1
        return (numbers, *out)

    # ----------------------------------------------------------------- the update
    def _clip_factor(self, grads: list[tuple[Tensor, Tensor, bool]]) -> tuple[float, float | None]:
        """(factor, norm) for (param, gradient, shared) triples under ``max_norm``."""
        if self.max_norm is None:
            return 1.0, None
        measured = [g for _, g, shared in grads if shared or self.clip == "all"]
        if not measured:
            return 1.0, 0.0
        norm = float(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.double()) for g in measured])
            )
        )
        return (min(1.0, self.max_norm / (norm + 1e-6)) if math.isfinite(norm) else 1.0), norm

    def _write(
        self, grads: list[tuple[Tensor, Tensor, bool]], s: float, fresh: bool = False
    ) -> tuple[float | None, bool]:
        """Add (param, gradient, shared) to ``.grad`` after clipping, times the scaler's scale s
        (``fresh``: the gradients are new tensors no one else holds, stored without a copy).
        """
        factor, norm = self._clip_factor(grads)
        for p, g, shared in grads:
            if factor != 1.0 and (shared or self.clip == "all"):
                g = g * factor
            _add_grad(p, g * s if s != 1.0 else g, fresh)
        return norm, factor != 1.0

    def _apply_backward(
        self,
        ls: LossSet,
        v: Tensor,
        s: float,
        backward_fn: Callable[[Tensor], None] | None,
        subset: Tensor,
    ) -> tuple[float | None, bool]:
        """The update by backward of Σ vᵢLᵢ (through ``backward_fn`` when given)."""
        total = ls.total(v)
        if s != 1.0:
            total = total * s
        if self.max_norm is None and self.heads == "weighted":
            (backward_fn or Tensor.backward)(total)
            return None, False
        # the step's own gradient, kept apart from what .grad already holds, then clipped/adjusted
        leaves, tasks = _reached_leaves(ls)
        k = ls.k
        shared = [len(t) >= 2 or k == 1 for t in tasks]
        heads: dict[int, Tensor] = {}
        if self.heads == "unweighted":
            own_idx = [j for j, sh in enumerate(shared) if not sh]
            if (
                own_idx
            ):  # Σ over the drawn tasks of their unweighted losses, at their own parameters only
                mask = torch.zeros_like(v)
                mask[subset] = 1.0
                own_total = ls.total(mask) * s if s != 1.0 else ls.total(mask)
                gs = torch.autograd.grad(
                    own_total, [leaves[j] for j in own_idx], retain_graph=True, allow_unused=True
                )
                for j, g in zip(own_idx, gs, strict=True):
                    heads[j] = self.reducer.average(torch.zeros_like(leaves[j]) if g is None else g)
        before = [p.grad for p in leaves]
        for p in leaves:
            p.grad = None
        try:
            (backward_fn or Tensor.backward)(total)
            new = [torch.zeros_like(p) if p.grad is None else p.grad for p in leaves]
        finally:
            for p, b in zip(leaves, before, strict=True):
                p.grad = b
        for j, g in heads.items():
            new[j] = g
        grads = [
            (p, g / s if s != 1.0 else g, sh) for p, g, sh in zip(leaves, new, shared, strict=True)
        ]
        return self._write(grads, s)

    # ----------------------------------------------------------------- one step
    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scaler: GradScaler | None = None,
        backward_fn: Callable[[Tensor], None] | None = None,
        present: Tensor | Sequence[bool] | Sequence[float] | None = None,
        absent_primary: Literal["skip"] | Weighting = "skip",
    ) -> StepResult:
        """Add ∇ Σᵢ vᵢLᵢ to ``.grad`` (scaled by the GradScaler's scale when ``scaler`` is given).

        Accumulates into existing ``.grad`` as a plain backward does; a list of losses and the
        same losses stacked give the same result. Skipped steps (non-finite values, an undefined
        method under ``on_undefined="skip"``) apply nothing. ``backward_fn(total)`` replaces
        ``total.backward()`` (e.g. Lightning's ``manual_backward``).

        ``present`` (a (k,) bool tensor) leaves the absent tasks out: see :meth:`_backward_present`.
        """
        if self._acc is not None:
            raise RuntimeError(
                "micro-batches are being accumulated: call backward_accumulated() first."
            )
        if present is not None:
            done = self._backward_present(
                losses,
                present,
                absent_primary,
                features=features,
                params=params,
                loss_fn=loss_fn,
                scaler=scaler,
                backward_fn=backward_fn,
            )
            if done is not None:
                return done
        self.reducer.before_step()
        ls = (
            losses if isinstance(losses, LossSet) else LossSet(losses)
        )  # a LossSet: present='s selection
        if params is not None:
            params = check_params(params)
        if "jacobian" in self.method.needs:
            return self._backward_jacobian(ls, params, scaler, features, backward_fn)
        L_det = ls.vector.detach()
        why = self._nonfinite_loss(L_det)
        s = 1.0
        needs_gram = self.needs_gram
        if why is None or self.reducer.lockstep:
            self._resolve_source(features)
            s = scale_of(scaler, L_det.device)
        got: dict[str, Part] = {}
        want_grads = not self.reducer.additive and backward_fn is None and s == 1.0

        def payload_of(subset: Tensor | None) -> Tensor | None:
            if subset is None or not needs_gram:
                return None
            assert self.source is not None
            view = ls if subset.numel() == ls.k else ls.select(subset.tolist())
            part = self.source.part(
                view,
                features=features,
                params=params,
                loss_fn=loss_fn,
                scale=s,
                additive=self.reducer.additive,
                want_grads=want_grads,
                all_losses=ls,
            )
            got["part"] = part
            return part.payload

        def gram_of(payload: Tensor, subset: Tensor | None) -> Tensor:
            assert self.source is not None
            return self.source.gram_of(
                payload, subset.numel() if subset is not None else ls.k, self.world_size
            )

        out = self._decide_step(L_det, why, payload_of, gram_of, scaler)
        if isinstance(out, StepResult):
            return out
        numbers, v, gram, subset, refreshed, fallback, reason = out
        part = got.get("part")
        if part is not None and part.update is not None and refreshed:
            own = (
                torch.ones(subset.numel(), dtype=v.dtype, device=v.device)
                if self.heads == "unweighted"
                else None
            )
            norm, clipped = self._write(part.update(v[subset], own), s, fresh=True)
        else:
            norm, clipped = self._apply_backward(ls, v, s, backward_fn, subset)
        self.schedule.advance()
        return self._result(
            v,
            gram,
            numbers,
            L_det,
            subset,
            refreshed,
            reason,
            fallback=fallback,
            grad_norm=norm,
            clipped=clipped,
        )

    def _backward_present(
        self, losses: Sequence[Tensor] | Tensor, present: Any, absent_primary: Any, **kwargs: Any
    ) -> StepResult | None:
        """The step on the present tasks only (None when every task is present).

        The absent tasks are left out of the Gram and of the method, which sees the m present
        tasks only (their sub-Gram and losses; a stateful method advances the state of those
        tasks only, see :mod:`taskgrad.training.present`); they get weight 0 and their losses
        are never back-propagated, so a NaN masked-mean loss of an absent task never reaches
        ``.grad`` (pass the losses as a list: the backward of a stacked tensor would reach every
        entry). For a primary/auxiliary method (task 0 primary) an absent primary follows
        ``absent_primary``: "skip" (default: nothing is applied, the result says why) or a
        Weighting applied to the present auxiliaries instead (e.g. ``taskgrad.Mean()``). The
        result's weights, losses and subset are over the k tasks (weight 0 for absent tasks),
        its Gram is the m×m one the method saw; ``extra["present"]`` holds the mask. Weights
        recomputed every step, no task subsampling. ``present`` may also hold non-negative
        counts (a task is present when its count is > 0; on one process and one batch the
        counts change nothing else).

        Over R processes (DDP) see :meth:`_backward_present_across`: task i's loss is the
        count-weighted mean over the processes where it is present.
        """
        from .present import check_present

        across = self.reducer.world_size != 1
        k = len(losses) if not isinstance(losses, Tensor) else int(losses.reshape(-1).shape[0])
        p = None if across else check_present(present, k)
        if p is None and not across:
            return None
        if self.subsample is not None or self.schedule.period != 1:
            raise ValueError(
                "present= needs weights recomputed every step (period=1) and no task subsampling."
            )
        if across:
            return self._backward_present_across(losses, present, absent_primary, **kwargs)
        assert p is not None
        idx = p.nonzero().squeeze(-1)
        if isinstance(losses, Tensor):
            flat = losses.reshape(-1)
            if not bool(torch.isfinite(flat.detach()[~p.to(flat.device)]).all()):
                raise ValueError(
                    "present=: an absent task's loss is not finite and the losses are one stacked "
                    "tensor, "
                    "whose backward reaches every entry; pass the losses as a list instead."
                )
            sub: Any = LossSet(losses).select(
                idx.tolist()
            )  # the stacked tensor's own per-task graphs
            L_all = flat.detach()
        else:
            sub = [losses[i] for i in idx.tolist()]
            L_all = torch.stack([torch.as_tensor(x).detach().reshape(()) for x in losses])
        method, names = self.method, self.names
        view = self._present_view(p, absent_primary, L_all, "this batch")
        if isinstance(view, StepResult):
            return view
        if idx.numel() == 0:
            raise ValueError("present= marks every task absent: there is nothing to step on.")
        self.method = view
        self.names = None if names is None else [names[i] for i in idx.tolist()]
        try:
            res = self.backward(sub, **kwargs)
        finally:
            self.method, self.names = method, names

        def spread(x: Tensor | None, fill: float) -> Tensor | None:
            if x is None:
                return None
            out = torch.full((k,), fill, dtype=x.dtype, device=x.device)
            out[idx.to(x.device)] = x
            return out

        L_full = L_all.to(res.losses.dtype).to(res.losses.device)
        weights = spread(res.weights, float("nan") if res.skipped else 0.0)
        assert weights is not None  # a result always has its weights
        return replace(
            res,
            weights=weights,
            losses=L_full,
            local_losses=L_full,
            subset=None if res.subset is None else idx.to(res.subset.device)[res.subset],
            extra={**res.extra, "present": p},
        )

    def _present_view(
        self, p: Tensor, absent_primary: Any, L_all: Tensor, where: str
    ) -> Weighting | StepResult:
        """The method seen through the present tasks ``p``; for a primary/auxiliary method whose
        primary (task 0) is absent, the ``absent_primary`` rule: a Weighting seen through the
        present tasks, or the skipped step's result ("skip").
        """
        from ..methods.registry import lookup
        from .present import PresentView

        if not (absent_primary == "skip" or isinstance(absent_primary, Weighting)):
            raise ValueError(
                f"absent_primary must be 'skip' or a Weighting, got {absent_primary!r}."
            )
        name = getattr(self.method, "method_name", None)
        aux_family = name is not None and lookup(name).family == "auxiliary"
        if not aux_family or bool(p[0]):
            return PresentView.of(self.method, p)
        if isinstance(absent_primary, Weighting):
            return PresentView.of(absent_primary, p)
        k = p.shape[0]
        nan = torch.full((k,), float("nan"), dtype=L_all.dtype, device=L_all.device)
        return StepResult(
            nan,
            None,
            L_all,
            skipped=True,
            local_losses=L_all,
            reason=f"the primary task ({_task_label(0, self.names)}) is absent from {where}",
            extra={"present": p},
        )

    def _backward_present_across(
        self,
        losses: Sequence[Tensor] | Tensor,
        present: Any,
        absent_primary: Any,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scaler: GradScaler | None = None,
        backward_fn: Callable[[Tensor], None] | None = None,
    ) -> StepResult:
        """``present=`` over R processes: the window of one micro-batch per process (see
        :meth:`accumulate`), exact for the global objective.

        With nᵢʳ the count of task i on process r (a bool mask: 1 present, 0 absent), task i's
        global loss is Lᵢ = Σ_r nᵢʳ Lᵢʳ / Σ_r nᵢʳ (the mean over the processes where it is
        present; with every task present on every process, the (1/R) Σ_r Lᵢʳ of DDP). The
        method sees the Gram of the ∇Lᵢ of the tasks present on some process; ``.grad`` gets
        Σᵢ wᵢ∇Lᵢ, identical on every process. A process never back-propagates the loss of a
        task absent on it: each process takes its present tasks' gradients and the step
        all-reduces them (no DDP backward), so it needs ``module=`` and the full-parameter Gram
        source. Every process must pass ``present=`` at the same step.
        """
        if backward_fn is not None:
            raise ValueError(
                "present= over several processes writes .grad itself from the all-reduced "
                "per-task gradients (no DDP backward runs): backward_fn= does not apply."
            )
        if params is not None:
            raise ValueError(
                "present= over several processes takes the compared parameters from the source: "
                "build it as FullGram(params) instead of passing params=."
            )
        if self._acc is not None:
            raise RuntimeError(
                "micro-batches are being accumulated: call backward_accumulated() first."
            )
        try:
            self.accumulate(
                losses, features=features, loss_fn=loss_fn, scaler=scaler, present=present
            )
        except BaseException:
            self._acc = None
            raise
        return self.backward_accumulated(scaler=scaler, absent_primary=absent_primary)

    def _backward_jacobian(
        self,
        ls: LossSet,
        params: list[Tensor] | None,
        scaler: GradScaler | None,
        features: Any,
        backward_fn: Any,
    ) -> StepResult:
        """The step of a Jacobian aggregator (``needs`` has "jacobian"): J (k × P) over the shared
        parameters (``params``, default: those two or more tasks reach) is materialized from the
        per-task gradients, d = method.aggregate(J, L) goes to them, and every other parameter a
        task reaches (its head) gets the unweighted ∇Lᵢ (TorchJD's mtl_backward convention);
        ``max_norm`` clipping, GradScaler scaling and the non-finite/undefined policies as usual.
        The result's ``weights`` are NaN (the update is not a weighted sum of the gradients) and
        ``extra["direction_norm"]`` holds ‖d‖. Memory: J holds k·P numbers. ``features`` are
        not used (the Jacobian is over the parameters, whatever the step's source).
        """
        name = type(self.method).__name__
        # the Jacobian is always over the parameters (as TorchJD's mtl_backward, which takes the
        # features only to reach them): features= is accepted and not used
        if backward_fn is not None:
            raise ValueError(
                f"{name} writes the aggregated gradient itself: backward_fn= does not apply."
            )
        if self.normalize is not None:
            raise ValueError(
                f"normalize= rescales weights; {name} returns a direction, not weights: leave "
                "normalize=None."
            )
        if self.reducer.world_size != 1 or self.subsample is not None or self.schedule.period != 1:
            raise ValueError(
                f"{name} aggregates the Jacobian itself: it runs on one process, every step, on "
                "all tasks "
                "(no reducer, subsample or period)."
            )
        k = ls.k
        L_det = ls.vector.detach()
        nan = torch.full((k,), float("nan"), dtype=L_det.dtype, device=L_det.device)
        numbers = StepNumbers(None, L_det, None)
        why = self._nonfinite_loss(L_det)
        if why is None:
            tg = task_gradients(ls, strategy="loop")
            why = None if tg.finite() else "task gradient"
        if why is not None:
            return self._skip(k, replace(numbers, bad=why, n_bad=1), L_det, scaler)
        s = scale_of(scaler, L_det.device)
        shared = params if params is not None else tg.shared()
        dtype = gram_dtype(tg.rows[0])
        blocks = []
        for p in shared:
            j = tg.index(p)
            blocks.append(
                tg.dense_rows(j, dtype)
                if j >= 0
                else torch.zeros(k, p.numel(), dtype=dtype, device=p.device)
            )
        J = torch.cat(blocks, dim=1)
        fallback = reason = None
        try:
            d = self.method.aggregate(J, losses=L_det.to(dtype))
        except UndefinedMethodError as err:
            reason = f"{name} is undefined for this step: {err}"
            if self.on_undefined == "raise":
                raise
            if self.on_undefined == "skip":
                return self._skip(k, numbers, L_det, scaler, reason=reason)
            fb = self.on_undefined
            assert isinstance(fb, Weighting)
            d = fb.aggregate(J, losses=L_det.to(dtype) if "losses" in fb.needs else None)
            fallback = type(fb).__name__
            self.n_fallback += 1
        if not finite(d):
            return self._skip(
                k,
                replace(numbers, bad=f"direction from {fallback or name}", n_bad=1),
                L_det,
                scaler,
            )
        grads: list[tuple[Tensor, Tensor, bool]] = []
        ids, offset = set(), 0
        for p in shared:
            grads.append((p, d[offset : offset + p.numel()].view_as(p), True))
            ids.add(id(p))
            offset += p.numel()
        for p, r in zip(tg.params, tg.rows, strict=True):
            if id(p) not in ids:
                grads.append((p, r.sum(0), False))
        norm, clipped = self._write(grads, s)
        return self._result(
            nan,
            None,
            numbers,
            L_det,
            torch.arange(k, device=L_det.device),
            True,
            reason,
            fallback=fallback,
            grad_norm=norm,
            clipped=clipped,
            extra={"direction_norm": float(d.norm())},
        )

    # ----------------------------------------------------------- accumulation
    def accumulate(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        weight: float | None = None,
        scaler: GradScaler | None = None,
        present: Tensor | Sequence[bool] | Sequence[float] | None = None,
    ) -> None:
        """Add one micro-batch (its losses weighted by ``weight``; None: 1/M for M micro-batches).

        Stores this micro-batch's per-task gradients and the source's payload; touches no ``.grad``.
        ``present`` (a (k,) bool tensor, or non-negative counts nᵢ; full-parameter Gram source):
        the absent tasks (nᵢ = 0) of this micro-batch are not back-propagated (a NaN loss is
        fine); each task's accumulated loss and gradient are then the mean over the micro-batches
        where it is present, weighted by the counts (Lᵢ = Σ_m nᵢᵐ Lᵢᵐ / Σ_m nᵢᵐ: with masked-mean
        losses over nᵢᵐ labelled examples, the masked mean over the window's batch); with
        ``weight=`` (bool masks only), the weighted sum over them. A task absent from the whole
        window is absent from the step (see :meth:`_backward_present`). Over R processes the
        sums run over every process's micro-batches (with ``weight=``: Σ_r Σ_m c_m Lᵢʳᵐ over
        the processes where task i is present, divided by their number); every process must
        pass ``present=`` in the same windows.
        """
        if "jacobian" in self.method.needs:
            raise ValueError(
                f"{type(self.method).__name__} aggregates the Jacobian itself and does not support "
                "accumulate()."
            )
        self.reducer.layout()  # the parameter layout shared by every process (checked now)
        ls = LossSet(losses)
        source = self._resolve_source(features)
        if self._acc is None:
            self._acc = Accumulation(
                ls.k, torch.zeros_like(ls.vector.detach()), scale=scale_of(scaler, ls.vector.device)
            )
        acc = self._acc
        c = acc.count(ls.k, weight)
        if acc.bad is not None:
            return
        if present is not None or acc.present_weight is not None:
            self._accumulate_present(acc, ls, c, present, source, features)
            return
        L_det = ls.vector.detach()
        why = self._nonfinite_loss(L_det)
        if why is not None:
            acc.bad = why
            return
        acc.losses = acc.losses + c * L_det
        tg = task_gradients(ls, strategy="loop").scaled(c)
        if not tg.finite():
            acc.bad = "gradient"
            return
        if acc.grads is None:
            acc.grads = tg
        else:
            acc.grads.add_(tg)
        if not self.needs_gram or source.gram_from_grads:
            return
        acc.directions = source.fix_directions(acc.directions, ls, loss_fn=loss_fn, params=params)
        part = source.part(ls, features=features, params=params, loss_fn=loss_fn, scale=acc.scale)
        if part.payload is None:
            return
        pay = part.payload * (c**source.payload_power)
        acc.payload = pay if acc.payload is None else acc.payload + pay

    def _accumulate_present(
        self,
        acc: Accumulation,
        ls: LossSet,
        c: float,
        present: Any,
        source: GramSource,
        features: Any = None,
    ) -> None:
        """One micro-batch of a window where some micro-batch passed ``present=``."""
        from .present import present_counts

        k = ls.k
        per_sample = isinstance(source, RepresentationGram)
        if self.needs_gram and not (source.gram_from_grads or per_sample):
            raise ValueError(
                "accumulate(present=) and present= over several processes need the "
                "full-parameter Gram source (source='full', FullGram(params) or JacobianGram) or "
                f"the representation source (features=z): the {type(source).__name__} cannot "
                "leave a task out of some micro-batches or processes exactly."
            )
        if acc.present_weight is None:
            if acc.n > 1:
                raise ValueError(
                    "pass present= from the first micro-batch of a window on (or never in it)."
                )
            acc.present_weight = torch.zeros(k, dtype=torch.float64)
        n = torch.ones(k, dtype=torch.float64) if present is None else present_counts(present, k)
        if acc.explicit and present is not None and torch.as_tensor(present).dtype != torch.bool:
            raise ValueError(
                "accumulate(weight=) takes a bool present= mask: counts already weight the "
                "micro-batches (pass counts without weight=, or a bool mask with it)."
            )
        idx = (n > 0).nonzero().squeeze(-1)
        if idx.numel() == 0:
            return  # nothing labelled in this micro-batch
        if (
            ls.stacked
            and idx.numel() < k
            and not bool(torch.isfinite(ls.vector.detach()[n == 0]).all())
        ):
            raise ValueError(
                "present=: an absent task's loss is not finite and the losses are one stacked "
                "tensor, "
                "whose backward reaches every entry; pass the losses as a list instead."
            )
        sub = ls if idx.numel() == k else ls.select(idx.tolist())
        L_det = sub.vector.detach()
        why = self._nonfinite_loss(L_det) if idx.numel() == k else None
        if why is None and not bool(torch.isfinite(L_det).all()):
            bad = [int(idx[j]) for j in range(idx.numel()) if not bool(torch.isfinite(L_det[j]))]
            why = "task loss of " + ", ".join(_task_label(i, self.names) for i in bad)
        if why is not None:
            acc.bad = why
            return
        dev = acc.losses.device
        n_sub = n[idx]
        acc.losses[idx.to(dev)] += c * n_sub.to(acc.losses) * L_det.to(acc.losses.dtype)
        acc.present_weight[idx] += c * n_sub
        tg = task_gradients(sub, strategy="loop").scaled(c)
        if not tg.finite():
            acc.bad = "gradient"
            return
        if self.needs_gram and per_sample:
            # the Gram of the present tasks adds over samples: task i's gradient at z is
            # c·nᵢ ∂Lᵢ/∂z here, so this micro-batch adds c²nᵢnⱼGᵢⱼ on the present pairs
            # a list's present losses as their own set: a view's vector stacks every loss, and
            # the backward through that stack would reach the absent (NaN) ones
            own = sub if ls.stacked or idx.numel() == k else LossSet(sub.items)
            part = source.part(own, features=features, scale=acc.scale)
            assert part.payload is not None
            m = idx.numel()
            G = part.payload.reshape(m, m)
            nn_ = (c * n_sub.to(G)).outer(c * n_sub.to(G))
            if acc.payload is None:
                acc.payload = torch.zeros(k * k, dtype=G.dtype, device=G.device)
            full = acc.payload.view(k, k)
            d_idx = idx.to(G.device)
            full[d_idx[:, None], d_idx] += G * nn_
        ids = idx.tolist()
        rows = tg.rows
        if not bool((n_sub == 1).all()):  # counts: each task's gradient times its count
            rows = [
                r * n_sub[list(t)].to(r).reshape(-1, *([1] * (r.dim() - 1)))
                for t, r in zip(tg.tasks, tg.rows, strict=True)
            ]
        tg = TaskGrads(k, tg.params, [tuple(ids[i] for i in t) for t in tg.tasks], rows)
        if acc.grads is None:
            acc.grads = tg
        else:
            acc.grads.add_(tg)

    def _accumulated_present(
        self, acc: Accumulation, scaler: GradScaler | None, absent_primary: Any = "skip"
    ) -> StepResult:
        """The step of a window with ``present=``: per-task (count-weighted) means over the
        micro-batches, and over processes, where each task is present, then the step on the tasks
        present somewhere.

        Over R processes the per-task sums Σ nᵢ are all-reduced first (with the bad-process
        count), so every process knows the same present tasks and denominators Dᵢ; it then
        scales its sums Sᵢʳ (losses, gradients) by R/Dᵢ, and the step's combine (which averages
        over processes) gives Σ_r Sᵢʳ/Dᵢ on every process.
        """
        assert acc.present_weight is not None
        k, R = acc.k, self.world_size
        N_loc = acc.present_weight
        dev = acc.losses.device
        head = torch.cat(
            [
                torch.tensor([float(acc.bad is not None)], dtype=torch.float64),
                N_loc,
                (N_loc > 0).to(torch.float64),
            ]
        )
        if R > 1:  # every process runs this all-reduce, whatever it saw
            head = self.reducer.total(head.to(dev), "present").cpu()
        n_bad = int(round(float(head[0])))
        N, ranks = head[1 : k + 1], head[k + 1 :]
        p = N > 0
        inv = torch.where(
            N_loc > 0, 1.0 / N_loc.clamp_min(torch.finfo(N_loc.dtype).tiny), torch.nan
        )
        L_loc = acc.losses * inv.to(acc.losses)  # this process's per-task means (NaN: absent)
        if n_bad:
            why = acc.bad if (acc.bad is not None and R == 1) else "loss or gradient"
            numbers = StepNumbers(why, L_loc, None, n_bad=n_bad, numel=head.numel())
            res = self._skip(k, numbers, L_loc, scaler)
            return replace(res, extra={**res.extra, "present": p})
        if not bool(p.any()):
            raise ValueError(
                "every task was absent from every micro-batch of the window"
                + (" on every process" if R > 1 else "")
                + ": nothing to step on."
            )
        D = ranks if acc.explicit else N
        f = torch.where(p, R / D.clamp_min(torch.finfo(D.dtype).tiny), torch.zeros_like(D))
        idx = p.nonzero().squeeze(-1)
        pos = {int(i): j for j, i in enumerate(idx.tolist())}
        m = idx.numel()
        view = self._present_view(
            p, absent_primary, L_loc, "the window" + (" on every process" if R > 1 else "")
        )
        if isinstance(view, StepResult):
            return view
        sub = Accumulation(
            m,
            (acc.losses[idx.to(dev)] * f[idx].to(acc.losses)),
            scale=acc.scale,
            n=1,
            explicit=True,
        )
        if acc.grads is not None:
            g = acc.grads
            rows = [
                r * f[list(t)].to(r).reshape(-1, *([1] * (r.dim() - 1)))
                for t, r in zip(g.tasks, g.rows, strict=True)
            ]
            sub.grads = TaskGrads(
                m, list(g.params), [tuple(pos[i] for i in t) for t in g.tasks], rows
            )
        if self.needs_gram and not self._source.gram_from_grads:
            # the representation Gram Σ c²nᵢnⱼGᵢⱼ over the present pairs, times fᵢfⱼ (every
            # process sends one, zeros where none of its tasks is present)
            d_idx = idx.to(dev)
            if acc.payload is None:
                sub.payload = torch.zeros(m * m, dtype=acc.losses.dtype, device=dev)
            else:
                fd = f[idx].to(acc.payload)
                Gp = acc.payload.view(k, k)[d_idx[:, None], d_idx]
                sub.payload = (Gp * fd.outer(fd)).reshape(-1)
        method, names = self.method, self.names
        self.method = view
        self.names = None if names is None else [names[i] for i in idx.tolist()]
        try:
            res = self._step_accumulated(sub, scaler)
        finally:
            self.method, self.names = method, names
        L_full = torch.full((k,), float("nan"), dtype=res.losses.dtype, device=res.losses.device)
        L_full[idx.to(L_full.device)] = res.losses
        weights = torch.full(
            (k,),
            float("nan") if res.skipped else 0.0,
            dtype=res.weights.dtype,
            device=res.weights.device,
        )
        weights[idx.to(weights.device)] = res.weights
        return replace(
            res,
            weights=weights,
            losses=L_full,
            local_losses=L_loc.to(res.losses.dtype) if R > 1 else L_full,
            subset=None if res.subset is None else idx.to(res.subset.device)[res.subset],
            numel_reduced=res.numel_reduced + (head.numel() if R > 1 else 0),
            extra={**res.extra, "present": p},
        )

    @property
    def _source(self) -> GramSource:
        """The resolved gradient source (made by the first backward or accumulate)."""
        if self.source is None:
            raise RuntimeError("no gradient source yet: call backward or accumulate first.")
        return self.source

    def backward_accumulated(
        self,
        scaler: GradScaler | None = None,
        *,
        absent_primary: Literal["skip"] | Weighting = "skip",
    ) -> StepResult:
        """Weights from the accumulated Gram, then ``.grad`` += Σᵢ vᵢ (accumulated ∇Lᵢ).

        ``absent_primary``: the rule when the window passed ``present=`` and the primary task
        of a primary/auxiliary method is absent from all of it (see :meth:`_backward_present`).
        """
        acc, self._acc = self._acc, None
        if acc is None:
            raise RuntimeError(
                "nothing accumulated: call accumulate(losses, ...) for each micro-batch first."
            )
        if acc.present_weight is not None:
            return self._accumulated_present(acc, scaler, absent_primary)
        return self._step_accumulated(acc, scaler)

    def _step_accumulated(self, acc: Accumulation, scaler: GradScaler | None) -> StepResult:
        """The step of a window (the body of :meth:`backward_accumulated`)."""
        self.reducer.before_step()
        k = acc.k
        c = acc.factor
        L_det = acc.losses * c
        source = self.source
        grads = acc.grads.scaled(c) if acc.grads is not None else None

        def payload_of(subset: Tensor | None) -> Tensor | None:
            if subset is None or not self.needs_gram:
                return None
            if self._source.gram_from_grads:
                assert grads is not None
                return self._source.gram_of_grads(grads)[subset][:, subset].reshape(-1)
            if acc.payload is None:
                raise TypeError(f"{type(source).__name__} does not support gradient accumulation.")
            G = self._source.gram_of(acc.payload * (c**self._source.payload_power), k)
            return G[subset][:, subset].reshape(-1)

        def gram_of(payload: Tensor, subset: Tensor | None) -> Tensor:
            m = subset.numel() if subset is not None else k
            G = payload.reshape(m, m)
            return 0.5 * (G + G.T)

        if self.reducer.additive:
            return self._accumulated_across(acc, grads, scaler)
        out = self._decide_step(L_det, acc.bad, payload_of, gram_of, scaler, "accumulated")
        if isinstance(out, StepResult):
            return out
        numbers, v, gram, subset, refreshed, fallback, reason = out
        norm, clipped = None, False
        if grads is not None:
            s = acc.scale
            full_v = v.to(grads.rows[0].dtype) if grads.rows else v
            own = torch.zeros_like(full_v)
            own[subset] = 1.0
            dirs = grads.direction(full_v, own if self.heads == "unweighted" else None)
            shared = [len(t) >= 2 or grads.k == 1 for t in grads.tasks]
            norm, clipped = self._write(list(zip(grads.params, dirs, shared, strict=True)), s)
        self.schedule.advance()
        return self._result(
            v,
            gram,
            numbers,
            L_det,
            subset,
            refreshed,
            reason,
            fallback=fallback,
            grad_norm=norm,
            clipped=clipped,
        )

    def _accumulated_across(
        self, acc: Accumulation, grads: TaskGrads | None, scaler: GradScaler | None
    ) -> StepResult:
        """The accumulated step over processes: ONE combine of [bad flag, Σ c L, reach mask,
        payload].

        The per-task gradients are laid out densely over the reducer's parameter list (the same
        on every process, even when a process's losses do not reach every parameter); the reach
        mask says which parameters no loss reached anywhere (their ``.grad`` is left untouched,
        as DDP does). Full-parameter sources send the k × P per-task gradients (which give the
        update directly); the others send their Gram payload and then the weighted gradient.
        """
        plist = self.reducer.layout()
        assert plist is not None  # a multi-process reducer lays the gradients out
        k, R, c = acc.k, self.world_size, acc.factor
        source = self.source
        offs = [0]
        for p in plist:
            offs.append(offs[-1] + p.numel())
        dtype = gram_dtype(plist[0])
        device = acc.losses.device
        rows = torch.zeros(k, offs[-1], dtype=dtype, device=device)
        reach = torch.zeros(k, len(plist), dtype=dtype, device=device)
        if grads is not None:
            for j, p in enumerate(plist):
                g = grads.index(p)
                if g >= 0:
                    rows[:, offs[j] : offs[j + 1]] = grads.dense_rows(g, dtype)
                    reach[list(grads.tasks[g]), j] = 1.0
        needs_gram = self.needs_gram
        full = needs_gram and self._source.gram_from_grads
        bad = acc.bad or (None if finite(rows) else "gradient")
        n_reach = k * len(plist)
        got: dict[str, Tensor] = {}

        def payload_of(subset: Tensor | None) -> Tensor:
            parts = [reach.reshape(-1)]
            if full:
                parts.append(rows.reshape(-1))
            elif subset is not None and needs_gram:
                if acc.payload is None:
                    raise TypeError(
                        f"{type(source).__name__} does not support gradient accumulation."
                    )
                parts.append((acc.payload * (c**self._source.payload_power)).to(dtype))
            return torch.cat(parts)

        def gram_of(total: Tensor, subset: Tensor | None) -> Tensor | None:
            got["reach"] = total[:n_reach].reshape(k, len(plist)) > 0
            rest = total[n_reach:]
            if full:
                got["J"] = J_bar = rest.reshape(k, -1) / R
                if subset is None:
                    return None
                own = getattr(source, "params", None)
                ids = None if own is None else {id(p) for p in own}
                G = torch.zeros(k, k, dtype=dtype, device=device)
                for j, p in enumerate(plist):
                    if (ids is None and int(got["reach"][:, j].sum()) >= 2) or (
                        ids is not None and id(p) in ids
                    ):
                        block = J_bar[:, offs[j] : offs[j + 1]]
                        G = G + block @ block.T
                return (0.5 * (G + G.T))[subset][:, subset]
            if subset is None or not needs_gram:
                return None
            return self._source.gram_of(rest, k, R)[subset][:, subset]

        out = self._decide_step(acc.losses * c, bad, payload_of, gram_of, scaler, "accumulated")
        if isinstance(out, StepResult):
            return out
        numbers, w, gram, subset, refreshed, fallback, reason = out
        if "reach" not in got:  # the weights were reused: the mask still came with the combine
            got["reach"] = (
                numbers.payload[:n_reach].reshape(k, len(plist)) > 0
                if numbers.payload is not None
                else reach > 0
            )
            if full:
                got["J"] = numbers.payload[n_reach:].reshape(k, -1) / R
        if full:
            flat = w.to(dtype) @ got["J"]
        else:
            flat = self.reducer.average((w.to(dtype) @ rows).contiguous(), "gradient")
            numbers = replace(numbers, numel=numbers.numel + flat.numel())
        own = None
        if (
            self.heads == "unweighted"
        ):  # a parameter one task reaches gets that task's unweighted gradient
            ones = torch.ones(k, dtype=dtype, device=device)
            if full:
                own = ones @ got["J"]
            else:
                own = self.reducer.average((ones @ rows).contiguous(), "head gradient")
                numbers = replace(numbers, numel=numbers.numel + own.numel())
        grads_out = []
        for j, p in enumerate(plist):
            n_tasks = int(got["reach"][:, j].sum())
            if n_tasks == 0:
                continue  # no loss reaches it on any process: leave .grad untouched, as DDP does
            src = own if own is not None and n_tasks == 1 and k > 1 else flat
            grads_out.append((p, src[offs[j] : offs[j + 1]].reshape(p.shape), n_tasks >= 2))
        norm, clipped = self._write(grads_out, acc.scale)
        self.schedule.advance()
        return self._result(
            w,
            gram,
            numbers,
            acc.losses * c,
            subset,
            refreshed,
            reason,
            fallback=fallback,
            grad_norm=norm,
            clipped=clipped,
        )

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Method, source, schedule, sub-sampling state and the skip/fallback counts."""
        if self._acc is not None:
            raise RuntimeError("cannot checkpoint in the middle of an accumulation window.")
        return {
            "method": {"type": type(self.method).__name__, "state": self.method.state_dict()},
            "source": None
            if self.source is None
            else {"type": type(self.source).__name__, "state": self.source.state_dict()},
            "schedule": self.schedule.state_dict(),
            "subsample": None if self.subsample is None else self.subsample.state_dict(),
            "fallback": self.on_undefined.state_dict()
            if isinstance(self.on_undefined, Weighting)
            else None,
            "counts": {"skipped": self.n_skipped, "fallback": self.n_fallback},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a step built with the same configuration."""
        if state["method"]["type"] != type(self.method).__name__:
            raise ValueError(
                f"checkpoint is for method {state['method']['type']}, not "
                f"{type(self.method).__name__}."
            )
        self.method.load_state_dict(state["method"]["state"])
        if state["source"] is not None:
            self._load_source(state["source"])
        self.schedule.load_state_dict(state["schedule"])
        if (state.get("subsample") is None) != (self.subsample is None):
            raise ValueError("checkpoint and this GradStep disagree on task sub-sampling.")
        if self.subsample is not None:
            self.subsample.load_state_dict(state["subsample"])
        if state.get("fallback") is not None and isinstance(self.on_undefined, Weighting):
            self.on_undefined.load_state_dict(state["fallback"])
        counts = state.get("counts", {})
        self.n_skipped = int(counts.get("skipped", 0))
        self.n_fallback = int(counts.get("fallback", 0))

    def _load_source(self, state: dict[str, Any]) -> None:
        names = {
            "FullGram": "full",
            "JacobianGram": "jacobian",
            "RepresentationGram": "representation",
            "SketchGram": "sketch",
        }
        if self.source is None:
            if self._source_spec not in ("auto", names.get(state["type"])):
                raise ValueError(
                    f"checkpoint is for source {state['type']}, not {self._source_spec!r}."
                )
            self.source = make_source(names[state["type"]], True)
        if state["type"] != type(self.source).__name__:
            raise ValueError(
                f"checkpoint is for source {state['type']}, not {type(self.source).__name__}."
            )
        self.source.load_state_dict(state["state"])


def _reached_leaves(ls: LossSet) -> tuple[list[Tensor], list[tuple[int, ...]]]:
    order: list[Tensor] = []
    tasks: dict[int, list[int]] = {}
    for i, leaves in enumerate(ls.leaves()):
        for p in leaves:
            if id(p) not in tasks:
                tasks[id(p)] = []
                order.append(p)
            tasks[id(p)].append(i)
    return order, [tuple(tasks[id(p)]) for p in order]


class TaskOptimizer(torch.optim.Optimizer):
    """Any torch.optim optimizer driven by a :class:`GradStep` (and optionally a GradScaler).

    ``opt.step(losses, features=z)`` zeroes the gradients, does the weighted update and the
    optimizer step; with a scaler, ``scaler.step``/``scaler.update`` (a step whose gradients are
    not finite is skipped by the scaler and reported as ``skipped``). For micro-batches call
    ``opt.accumulate(losses, ...)`` for each, then ``opt.step()``.

    It is a ``torch.optim.Optimizer``: ``param_groups`` (shared with the wrapped optimizer, so
    LR schedulers such as ``StepLR(opt, 10)`` act on it), ``state``, ``zero_grad()``,
    ``state_dict()``/``load_state_dict()`` (optimizer, method, source, schedule and scaler
    state: a resume is bit-identical). The wrapped optimizer is ``opt.optimizer``; the step
    object ``opt.gradstep``. With ``scaler=``, do not call ``scaler.step(opt)`` yourself: the
    TaskOptimizer steps and updates the scaler.
    """

    optimizer: torch.optim.Optimizer  # the wrapped optimizer

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        step: GradStep | None = None,
        *,
        scaler: GradScaler | None = None,
        **gradstep_kwargs: Any,
    ) -> None:
        if isinstance(optimizer, TaskOptimizer):
            raise TypeError(
                "optimizer is already a TaskOptimizer; wrap the torch optimizer only once."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )
        if step is not None and gradstep_kwargs:
            raise ValueError("pass either a GradStep or GradStep keyword arguments, not both.")
        # set below; add_param_group needs to know during Optimizer.__init__
        self.optimizer = None  # type: ignore[assignment]
        super().__init__(optimizer.param_groups, optimizer.defaults)  # the same group dicts, shared
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.optimizer = optimizer
        self.gradstep = step if step is not None else GradStep(**gradstep_kwargs)
        self.scaler = scaler
        self.n_skipped = 0
        self._accumulating = False

    @property
    def n_fallback(self) -> int:
        """Steps that used the ``on_undefined`` fallback method."""
        return self.gradstep.n_fallback

    def accumulate(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> None:
        """Add a micro-batch (see :meth:`GradStep.accumulate`)."""
        self._accumulating = True
        self.gradstep.accumulate(losses, scaler=self.scaler, **kwargs)

    def step(self, losses: Sequence[Tensor] | Tensor | None = None, **kwargs: Any) -> StepResult:  # type: ignore[override]
        """One optimizer step from ``losses`` (or from the accumulated micro-batches)."""
        if callable(losses) and not isinstance(losses, Tensor):
            raise TypeError(
                "TaskOptimizer.step takes the task losses, not a closure: opt.step([L1, L2, ...])."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if losses is None:
            if not self._accumulating:
                raise ValueError(
                    "step() without losses needs micro-batches added with accumulate() first."
                )
            self._accumulating = False
            res = self.gradstep.backward_accumulated(scaler=self.scaler, **kwargs)
        else:
            if self._accumulating:
                raise RuntimeError(
                    "micro-batches are being accumulated: call step() without losses."
                )
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

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter (as the wrapped optimizer's ``zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapped optimizer (and so to this one)."""
        if (
            self.optimizer is None
        ):  # during torch.optim.Optimizer.__init__: the wrapped groups, shared
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, GradStep (method, source, schedule) and scaler state."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "gradstep": self.gradstep.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "n_skipped": self.n_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "gradstep" not in state:
            raise ValueError(
                "this is not a TaskOptimizer checkpoint (no 'gradstep' entry); for the wrapped "
                "optimizer's own state use opt.optimizer.load_state_dict(...)."
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.gradstep.load_state_dict(state["gradstep"])
        if state["scaler"] is not None:
            if self.scaler is None:
                raise ValueError(
                    "checkpoint has GradScaler state but this TaskOptimizer has no scaler."
                )
            self.scaler.load_state_dict(state["scaler"])
        self.n_skipped = int(state["n_skipped"])

    def __repr__(self) -> str:
        opt, method = type(self.optimizer).__name__, type(self.gradstep.method).__name__
        return f"TaskOptimizer({opt}, method={method})"
