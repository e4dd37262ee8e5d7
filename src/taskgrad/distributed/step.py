"""`DistributedStep`: one taskgrad step under DistributedDataParallel, exact to the global batch.

:class:`DistributedStep` is a :class:`~taskgrad.training.GradStep` built with an injected
:class:`AllReduce` reducer (nothing else differs: same step, same sources, same result type).
Per step every rank

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
rank's micro-batches: it stores each micro-batch's per-task gradients (no ``.backward()`` is
called, so ``no_sync`` is irrelevant and DDP's reducer never fires), then at the end lays them
out densely over ``module``'s P trainable parameters and all-reduces
[bad-rank count, Σ_m c_m Lᵐ, task-reach mask, Gram payload] and, for the representation
and sketch sources, the weighted gradient (P numbers, what DDP would send); for the full
source the k × P per-task gradients themselves, which gives the gradient directly. The storage
is dense over ``module``'s parameters (not per graph leaf, as GradStep's) so that every rank
all-reduces the same layout even when, with ``find_unused_parameters=True``, a rank's losses
do not reach every parameter; the reach mask tells which parameters DDP would leave untouched.

Partially labelled tasks (``present=`` on every rank: a (k,) bool mask or non-negative counts
nᵢʳ) run as a window of one micro-batch, exact for Lᵢ = Σ_r nᵢʳ Lᵢʳ / Σ_r nᵢʳ (the mean over the
ranks where task i is present; DDP's mean when every task is present everywhere): the per-task
sums Σ_r nᵢʳ are all-reduced first (2k + 1 numbers), every rank back-propagates only its own
present tasks, and the tasks absent on every rank are left out of the step (see
:mod:`taskgrad.training.present`). Full-parameter and representation sources; the sketch raises.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..methods import Weighting
from ..sources.objects import GramSource, SketchGram
from ..training.reduce import ADVICE, Reducer, StepNumbers
from ..training.step import GradStep, StepResult
from .comm import Traffic, all_reduce_sum, assert_identical, assert_in_sync, world_size
from .sources import DistributedSource

__all__ = ["AllReduce", "DistributedStep", "DistributedStepResult", "FeatureHook"]

#: the result of a distributed step: the one :class:`~taskgrad.training.StepResult` type
DistributedStepResult = StepResult


class FeatureHook:
    """Keep the output of ``module`` from its last forward: ``hook.value`` is the tensor the
    next layers consumed (use it as ``features=`` for the representation source).

    Needed under DDP with ``find_unused_parameters=True``: DDP passes its outputs through an
    autograd function that copies them, so a feature tensor *returned* by the wrapped model is
    not the one the task heads were computed from. Call :meth:`remove` to detach the hook.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"FeatureHook needs an nn.Module (e.g. model.encoder), got {type(module).__name__}."
            )
        self.value: Tensor | None = None
        self._handle = module.register_forward_hook(self._store)

    def _store(self, module: nn.Module, args: Any, output: Any) -> None:
        self.value = output

    def remove(self) -> None:
        """Stop capturing."""
        self._handle.remove()


class AllReduce(Reducer):
    """Sum the step's numbers over a process group: ONE all-reduce of [bad flag, L (k), payload].

    A bad rank sends zeros for its losses and payload (their NaN would poison the sums); every
    rank then sees the bad-rank count, L̄ = ΣL/R and the summed payload. Without
    torch.distributed (one process) it exchanges nothing and the step is an ordinary local one.

    Args:
        group: the process group (None: the default one).
        module: the (DDP-wrapped) model: the layout of accumulated gradients, and ``debug``
            checks of the parameters.
        debug: assert that every rank holds the same parameters before a step and applies
            bitwise the same weights.
        bucket_numel: largest single all-reduce. traffic: counts what is sent.
        sketch: the sketch source whose generator ``debug`` compares across ranks.
    """

    def __init__(
        self,
        group: Any = None,
        *,
        module: nn.Module | None = None,
        debug: bool = False,
        bucket_numel: int | None = 1 << 22,
        traffic: Traffic | None = None,
    ) -> None:
        self.group = group
        self.module = module
        self.debug = debug
        self.bucket_numel = bucket_numel
        self.traffic = traffic if traffic is not None else Traffic()
        self.sketch: SketchGram | None = None

    @property
    def world_size(self) -> int:  # noqa: D102
        return world_size(self.group)

    @property
    def additive(self) -> bool:  # type: ignore[override]  # noqa: D102
        return self.world_size > 1

    @property
    def lockstep(self) -> bool:  # type: ignore[override]  # noqa: D102
        return self.world_size > 1

    def reduce(self, buf: Tensor, what: str) -> Tensor:
        """Σ over ranks of ``buf`` (in place, counted in :attr:`traffic`)."""
        return all_reduce_sum(
            buf.contiguous(),
            self.group,
            bucket_numel=self.bucket_numel,
            traffic=self.traffic,
            what=what,
        )

    def combine(self, numbers: StepNumbers, what: str = "step") -> StepNumbers:  # noqa: D102
        self._check_sketch_generator()
        L, payload = numbers.losses, numbers.payload
        bad = numbers.bad is not None
        wide = L.dtype == torch.float64 or (payload is not None and payload.dtype == torch.float64)
        dtype = torch.float64 if wide else torch.float32
        k = L.shape[0]
        parts = [
            torch.tensor([float(bad)], dtype=dtype, device=L.device),
            torch.zeros(k, dtype=dtype, device=L.device) if bad else L.to(dtype),
        ]
        if payload is not None:
            parts.append(torch.zeros_like(payload, dtype=dtype) if bad else payload.to(dtype))
        buf = self.reduce(torch.cat(parts), what)
        n_bad = int(round(float(buf[0])))
        why = None
        if n_bad:
            why = (
                numbers.bad
                if (bad and self.world_size == 1)
                else ("loss or Gram" if what == "step" else "loss or gradient")
            )
        return StepNumbers(
            why,
            buf[1 : 1 + k] / self.world_size,
            buf[1 + k :] if payload is not None else None,
            n_bad=n_bad,
            numel=buf.numel(),
        )

    def average(self, t: Tensor, what: str = "gradient") -> Tensor:  # noqa: D102
        if self.world_size == 1:
            return t
        return self.reduce(t.contiguous().clone(), what) / self.world_size

    def total(self, t: Tensor, what: str = "sum") -> Tensor:  # noqa: D102
        if self.world_size == 1:
            return t
        return self.reduce(t.contiguous().clone(), what)

    def layout(self) -> list[Tensor]:  # noqa: D102
        if self.module is None:
            raise ValueError(
                "gradient accumulation and present= need the model: build "
                "DistributedStep(..., module=ddp_model) so that every rank keeps (and "
                "all-reduces) the same parameters in the same order."
            )
        return [p for p in self.module.parameters() if p.requires_grad]

    def before_step(self) -> None:  # noqa: D102
        if self.debug and self.module is not None:
            assert_in_sync(
                self.module.parameters(), self.group, what="the model parameters before the step"
            )

    def check_weights(self, v: Tensor) -> None:  # noqa: D102
        if self.debug:
            assert_identical(v, self.group, what="the applied task weights")

    def attach(self, source: GramSource) -> None:  # noqa: D102
        self.sketch = source if isinstance(source, SketchGram) else None

    def _check_sketch_generator(self) -> None:
        src = self.sketch
        state = src.state_dict()["generator"] if self.debug and src is not None else None
        if state is not None:
            assert_identical(
                state.to(torch.float64),
                self.group,
                what="the sketch's random generator state (seed every rank the same)",
            )

    def skip_texts(self, why: str, n_bad: int) -> tuple[str, str]:  # noqa: D102
        message = (
            f"{why} is not finite (NaN or Inf) on {n_bad} of {self.world_size} ranks; "
            f"every rank stops. {ADVICE}"
        )
        return message, f"non-finite {why} on {n_bad} rank(s)"


class DistributedStep(GradStep):
    """A :class:`~taskgrad.training.GradStep` with an :class:`AllReduce` reducer (see the module
    docstring); it adds no behaviour of its own.

    ``backward(losses, features=..., params=..., loss_fn=..., scaler=..., backward_fn=...)`` is
    a collective: every rank must call it at the same step. Returns a
    :class:`~taskgrad.training.StepResult`. ``backward(..., present=p)`` (every rank passes
    ``present=`` at that step, or none does) takes task i's loss as the mean over the ranks
    where it is present, count-weighted when ``p`` holds counts (see the module docstring); it
    needs ``module=``.

    Args:
        method: a :class:`~taskgrad.methods.Weighting` (default Mean). Every rank must build
            it with the same arguments (and the same generator seed for random methods).
        source: a GramSource or name ("auto": representation when ``features`` are passed,
            else the full-parameter source). A :class:`DistributedSource` is unwrapped.
        group, module, debug, bucket_numel, traffic: the :class:`AllReduce` reducer's.
        **options: as for GradStep (``period``, ``ema``, ``nonfinite``, ``on_undefined``,
        ``heads``, ``max_norm``, ``clip``, ``normalize``, ``names``).
    """

    def __init__(
        self,
        method: Weighting | None = None,
        source: GramSource | str = "auto",
        *,
        group: Any = None,
        module: nn.Module | None = None,
        debug: bool = False,
        bucket_numel: int | None = 1 << 22,
        traffic: Traffic | None = None,
        nonfinite: Literal["auto", "raise", "skip"] = "auto",
        **options: Any,
    ) -> None:
        if isinstance(source, DistributedSource):
            source = source.inner if source.inner is not None else source._spec
        reducer = AllReduce(
            group, module=module, debug=debug, bucket_numel=bucket_numel, traffic=traffic
        )
        super().__init__(method, source, nonfinite=nonfinite, reducer=reducer, **options)
        self.group = group
        self.module = module
        self.debug = debug
        self.traffic = reducer.traffic
