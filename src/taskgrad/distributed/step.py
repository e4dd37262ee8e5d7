"""`DistributedStep`: one taskgrad step under DistributedDataParallel, exact to the global batch.

:class:`DistributedStep` is a :class:`~taskgrad.training.GradStep` whose combine hook is an
all-reduce. Per step every rank

1. computes its local losses Lʳ (k,) and, when the method needs it, its local Gram payload
   (Gʳ k×k for the representation source, JʳΩ k×r for the sketch, Jʳ k×P for the full
   parameters; see :mod:`taskgrad.distributed.sources`);
2. all-reduces ONE flat buffer [bad-rank count, Lʳ, payload]: (1 + k + payload) numbers;
3. if any rank saw a NaN/Inf (loss or payload), every rank skips the step (no backward);
4. otherwise every rank feeds the same L̄ = (1/R) Σ_r Lʳ and the same global G to the method,
   so every rank gets bitwise the same weights w (``debug=True`` asserts it, one more
   all-reduce of 4k numbers), and stateful methods advance identically;
5. runs the usual (DDP) backward of Σᵢ wᵢ Lᵢʳ, whose averaged gradient is Σᵢ wᵢ ∇L̄ᵢ.

Without torch.distributed (one process) the same object is an ordinary taskgrad step.

Gradient accumulation (:meth:`DistributedStep.accumulate` per micro-batch, then
:meth:`DistributedStep.backward_accumulated`) is exact for the global batch made of every
rank's micro-batches: it stores each micro-batch's per-task gradients (k × P floats per rank
for the P trainable parameters of ``module``; no ``.backward()`` is called, so ``no_sync`` is
irrelevant and DDP's reducer never fires), then at the end all-reduces
[bad-rank count, Σ_m c_m Lᵐ, task-reach mask, Gram payload] and, for the representation
and sketch sources, the weighted gradient (P numbers, what DDP would send); for the full
source the k × P per-task gradients themselves, which gives the gradient directly. The storage
is dense over ``module``'s parameters (not per graph leaf, as GradStep's) so that every rank
all-reduces the same layout even when, with ``find_unused_parameters=True``, a rank's losses
do not reach every parameter; the reach mask tells which parameters DDP would leave untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..methods.base import Weighting
from ..sources._graph import as_loss_vector, reachable_leaves
from ..sources.blockwise import for_each_block
from ..sources.objects import GramSource, SketchGram
from ..training.step import (ADVICE, GradStep, StepNumbers, _count_micro_batch, _finite, _representation_part,
                             _scale_of, _sketch_part)
from .comm import Traffic, all_reduce_sum, assert_identical, assert_in_sync, world_size
from .sources import DistributedSource

__all__ = ["DistributedStep", "DistributedStepResult", "FeatureHook"]


@dataclass
class DistributedStepResult:
    """What one distributed step did (identical on every rank except ``local_losses``).

    weights: (k,) weights applied (NaN when skipped). gram: the global Gram the method saw
    (None when not needed or reused). losses: (k,) L̄ = (1/R) Σ_r Lʳ. local_losses: this rank's.
    refreshed: weights recomputed this step (False: reused by the periodic schedule).
    skipped / reason / bad_ranks: the step was skipped on every rank because ``bad_ranks`` ranks
    saw a non-finite value. numel_reduced: numbers this rank all-reduced for this step
    (excluding DDP's own gradient all-reduce).
    """

    weights: Tensor
    gram: Tensor | None
    losses: Tensor
    local_losses: Tensor
    refreshed: bool
    skipped: bool = False
    reason: str | None = None
    bad_ranks: int = 0
    numel_reduced: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FeatureHook:
    """Keep the output of ``module`` from its last forward: ``hook.value`` is the tensor the
    next layers consumed (use it as ``features=`` for the representation source).

    Needed under DDP with ``find_unused_parameters=True``: DDP passes its outputs through an
    autograd function that copies them, so a feature tensor *returned* by the wrapped model is
    not the one the task heads were computed from. Call :meth:`remove` to detach the hook.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"FeatureHook needs an nn.Module (e.g. model.encoder), got {type(module).__name__}.")
        self.value: Tensor | None = None
        self._handle = module.register_forward_hook(self._store)

    def _store(self, module: nn.Module, args: Any, output: Any) -> None:
        self.value = output

    def remove(self) -> None:
        """Stop capturing."""
        self._handle.remove()


class DistributedStep(GradStep):
    """Method + source (+ periodic schedule) over a process group; see the module docstring.

    ``backward(losses, features=..., params=..., loss_fn=..., scaler=..., backward_fn=...)`` is
    :meth:`GradStep.backward <taskgrad.training.GradStep.backward>` and a collective: every rank
    must call it at the same step. With ``scaler`` the backward is of s·Σ wᵢLᵢʳ (s the
    GradScaler's scale); ``backward_fn`` routes the backward through a framework (e.g.
    Lightning's ``manual_backward``). It returns a :class:`DistributedStepResult`.

    Args:
        method: a :class:`~taskgrad.methods.Weighting` (default Mean). Every rank must build
            it with the same arguments (and the same generator seed for random methods).
        source: a GramSource or name ("auto": representation when ``features`` are passed,
            else the full-parameter source), wrapped in a :class:`DistributedSource`.
        group: the process group (None: the default one).
        module: the (DDP-wrapped) model; required for accumulation and for ``debug`` checks of
            the parameters.
        period, ema: the :class:`~taskgrad.training.schedule.Periodic` schedule.
        nonfinite: "skip" (default) or "raise" (raised on every rank at once).
        debug: assert after each step that every rank computed bitwise the same weights (and,
            with ``module``, holds the same parameters before the step).
        bucket_numel: largest single all-reduce (the k × P payload is split).
        traffic: a :class:`~taskgrad.distributed.comm.Traffic` to count what is sent.
    """

    _lockstep = True  # the payload (and the sketch's random directions) even on a rank with a NaN

    def __init__(
        self,
        method: Weighting | None = None,
        source: GramSource | str = "auto",
        *,
        group: Any = None,
        module: nn.Module | None = None,
        period: int = 1,
        ema: float | None = None,
        nonfinite: Literal["raise", "skip"] = "skip",
        debug: bool = False,
        bucket_numel: int | None = 1 << 22,
        traffic: Traffic | None = None,
    ) -> None:
        super().__init__(method, DistributedSource(source, group, bucket_numel=bucket_numel, traffic=None),
                         period=period, ema=ema, nonfinite=nonfinite)
        self.source: DistributedSource
        self.group = group
        self.traffic = traffic if traffic is not None else Traffic()
        self.module = module
        self.debug = debug
        self.bucket_numel = bucket_numel

    # ------------------------------------------------------------------ GradStep hooks
    @property
    def world_size(self) -> int:
        """Number of ranks R."""
        return world_size(self.group)

    def _reduce(self, buf: Tensor, what: str) -> Tensor:
        return all_reduce_sum(buf.contiguous(), self.group, bucket_numel=self.bucket_numel, traffic=self.traffic,
                              what=what)

    def _combine(self, numbers: StepNumbers, what: str = "step") -> StepNumbers:
        """ONE all-reduce of [bad flag, L (k), payload]: the bad-rank count, L̄ = ΣL/R, Σ payload.

        A bad rank sends zeros for its losses and payload (their NaN would poison the sums).
        """
        L, payload = numbers.losses, numbers.payload
        bad = numbers.bad is not None
        wide = L.dtype == torch.float64 or (payload is not None and payload.dtype == torch.float64)
        dtype = torch.float64 if wide else torch.float32
        k = L.shape[0]
        parts = [torch.tensor([float(bad)], dtype=dtype, device=L.device),
                 torch.zeros(k, dtype=dtype, device=L.device) if bad else L.to(dtype)]
        if payload is not None:
            parts.append(torch.zeros_like(payload, dtype=dtype) if bad else payload.to(dtype))
        buf = self._reduce(torch.cat(parts), what)
        n_bad = int(round(float(buf[0])))
        why = ("loss or Gram" if what == "step" else "loss or gradient") if n_bad else None
        return StepNumbers(why, buf[1 : 1 + k] / self.world_size, buf[1 + k :] if payload is not None else None,
                           n_bad=n_bad, numel=buf.numel())

    def _local_payload(self, losses: Any, L: Tensor, subset: Tensor, *, features: Any, params: Any, loss_fn: Any,
                       scale: float) -> Tensor:
        """This rank's Gʳ, JʳΩ or Jʳ (flat; see :class:`DistributedSource`), for all k tasks."""
        self._check_sketch_generator()
        return self.source.local_payload(L, features=features, params=params, loss_fn=loss_fn, scale=scale)

    def _gram_from(self, payload: Tensor, k: int, features: Any) -> Tensor:
        return self.source.gram_from_sum(payload, k, features)

    def _before_step(self) -> None:
        if self.debug and self.module is not None:
            assert_in_sync(self.module.parameters(), self.group, what="the model parameters before the step")

    def _check_weights(self, v: Tensor) -> None:
        if self.debug:
            assert_identical(v, self.group, what=f"the weights of {type(self.method).__name__}")

    def _check_sketch_generator(self) -> None:
        src = self.source.inner
        if self.debug and isinstance(src, SketchGram) and src._gen is not None:
            state = src._gen.get_state().to(torch.float64)
            assert_identical(state, self.group, what="the sketch's random generator state (seed every rank the same)")

    def _skip_texts(self, why: str, n_bad: int) -> tuple[str, str]:
        message = f"{why} is not finite (NaN or Inf) on {n_bad} of {self.world_size} ranks; every rank stops. {ADVICE}"
        return message, f"non-finite {why} on {n_bad} rank(s)"

    def _result(self, weights: Tensor, gram: Tensor | None, numbers: StepNumbers, local: Tensor, subset: Tensor,
                refreshed: bool, reason: str | None = None) -> DistributedStepResult:  # type: ignore[override]
        return DistributedStepResult(weights, gram, numbers.losses.to(local.dtype), local, refreshed,
                                     skipped=reason is not None, reason=reason, bad_ranks=numbers.n_bad,
                                     numel_reduced=numbers.numel)

    def _source_state(self) -> dict[str, Any]:
        return self.source.state_dict()

    def _load_source(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    # ------------------------------------------------------------------ accumulation
    def _trainable(self) -> list[Tensor]:
        if self.module is None:
            raise ValueError(
                "gradient accumulation needs the model: build DistributedStep(..., module=ddp_model) so "
                "that every rank keeps (and all-reduces) the same parameters in the same order."
            )
        return [p for p in self.module.parameters() if p.requires_grad]

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
        """Add one micro-batch (losses weighted by ``weight``; None: 1/M for M micro-batches).

        Local only (no collective, no ``.backward()``, no ``.grad`` touched); memory k × P.
        """
        L = as_loss_vector(losses)
        k = L.shape[0]
        plist = self._trainable()
        if self._acc is None:
            offsets = [0]
            for p in plist:
                offsets.append(offsets[-1] + p.numel())
            dtype = torch.float64 if plist[0].dtype == torch.float64 else torch.float32
            self._acc = {"k": k, "offsets": offsets, "rows": torch.zeros(k, offsets[-1], dtype=dtype, device=L.device),
                         "reach": torch.zeros(k, len(plist), dtype=dtype, device=L.device), "n": 0,
                         "explicit": None, "bad": False, "losses": torch.zeros(k, dtype=dtype, device=L.device),
                         "payload": None, "gen0": None, "scale": _scale_of(scaler, L.device),
                         "features": features is not None}
        acc = self._acc
        c = _count_micro_batch(acc, k, weight)
        s = acc["scale"]
        L_det = L.detach()
        if not _finite(L_det):
            acc["bad"] = True
        acc["losses"] += c * L_det.to(acc["losses"].dtype)
        index = {id(p): j for j, p in enumerate(plist)}
        for i, loss in enumerate(L.unbind()):
            for leaf in reachable_leaves(loss):
                if id(leaf) in index:
                    acc["reach"][i, index[id(leaf)]] = 1.0
        reached = [p for p in plist if bool(acc["reach"][:, index[id(p)]].any())]
        where = [index[id(p)] for p in reached]
        offs = acc["offsets"]
        rows_buf = acc["rows"]

        def consume(j: int, rows: Tensor) -> None:
            g = where[j]
            rows_buf[:, offs[g] : offs[g + 1]] += (c / s) * rows.reshape(k, -1).to(rows_buf.dtype)

        if reached:
            for_each_block(L * s if s != 1.0 else L, reached, consume)
        kind = self.source.kind(features) if "gram" in self.method.needs else None
        part = None
        if kind == "representation":
            part = _representation_part(L, features, c, s)
        elif kind == "sketch":
            src = self.source.inner
            assert isinstance(src, SketchGram)
            part = _sketch_part(acc, src, L, c, loss_fn, params, on_first=self._check_sketch_generator)
        if part is not None:
            part = part.reshape(-1).to(rows_buf.dtype)
            acc["payload"] = part if acc["payload"] is None else acc["payload"] + part

    def backward_accumulated(self, scaler: Any = None) -> DistributedStepResult:  # type: ignore[override]
        """Weights from the accumulated global batch, then ``.grad`` += the averaged Σᵢ vᵢ ∇Lᵢ.

        A collective. The written gradient is already averaged over ranks (do not let DDP
        all-reduce it again: no ``.backward()`` is involved). With ``scaler``, the gradient is
        multiplied by the scale (as a scaled backward would leave it) for ``scaler.step``.
        """
        acc, self._acc = self._acc, None
        if acc is None:
            raise RuntimeError("nothing accumulated: call accumulate(losses, ...) for each micro-batch first.")
        self._before_step()
        plist = self._trainable()
        k, R, offs, rows = acc["k"], self.world_size, acc["offsets"], acc["rows"]
        c = 1.0 / acc["n"] if not acc["explicit"] else 1.0
        kind = self.source.kind(True if acc["features"] else None) if "gram" in self.method.needs else None
        full = kind == "jacobian"
        bad = acc["bad"] or not _finite(rows) or (acc["payload"] is not None and not _finite(acc["payload"]))
        n_reach = k * len(plist)
        got: dict[str, Tensor] = {}

        def payload_of(subset: Tensor | None) -> Tensor:
            """[reach mask (k × len(plist)), then Jʳ (full source) or the Gram payload (refresh)]."""
            parts = [acc["reach"].reshape(-1)]
            if full:
                parts.append(rows.reshape(-1))
            elif subset is not None and kind is not None:
                parts.append(acc["payload"])
            return torch.cat(parts)

        def gram_of(total: Tensor, subset: Tensor | None) -> Tensor | None:
            got["reach"] = total[:n_reach].reshape(k, len(plist)) > 0
            rest = total[n_reach:]
            if full:
                got["J"] = J_bar = rest.reshape(k, -1) * (c / R)
                if subset is None:
                    return None
                own = getattr(self.source.inner, "params", None)
                ids = None if own is None else {id(p) for p in own}
                G = torch.zeros(k, k, dtype=rows.dtype, device=rows.device)
                for j, p in enumerate(plist):
                    if (ids is None and int(got["reach"][:, j].sum()) >= 2) or (ids is not None and id(p) in ids):
                        block = J_bar[:, offs[j] : offs[j + 1]]
                        G = G + block @ block.T
                return 0.5 * (G + G.T)
            if subset is None or kind is None:
                return None
            return self.source.gram_from_sum(rest * (c * c if kind == "representation" else c), k,
                                             True if kind == "representation" else None)

        out = self._decide_step(acc["losses"] * c, "loss or gradient" if bad else None, payload_of, gram_of, scaler,
                                "accumulated")
        if not isinstance(out, tuple):
            return out  # skipped on every rank
        numbers, w, gram, subset, refreshed = out
        s = _scale_of(scaler, rows.device)
        if full:
            flat = w.to(rows.dtype) @ got["J"]
        else:
            flat = (w.to(rows.dtype) @ rows) * c
            self._reduce(flat, "gradient")
            flat = flat / R
            numbers = replace(numbers, numel=numbers.numel + flat.numel())
        if s != 1.0:
            flat = flat * s
        for j, p in enumerate(plist):
            if not bool(got["reach"][:, j].any()):
                continue  # no loss reaches it on any rank: leave .grad untouched, as DDP does
            g = flat[offs[j] : offs[j + 1]].reshape(p.shape).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
        self.schedule.advance()
        return self._result(w, gram, numbers, acc["losses"] * c, subset, refreshed)
