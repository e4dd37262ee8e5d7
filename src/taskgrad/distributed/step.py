"""`DistributedStep`: one taskgrad step under DistributedDataParallel, exact to the global batch.

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
rank's micro-batches: it stores each micro-batch's per-task gradients (k × P floats per rank
for the P trainable parameters of ``module``; no ``.backward()`` is called, so ``no_sync`` is
irrelevant and DDP's reducer never fires), then at the end all-reduces
[bad-rank count, Σ_m c_m Lᵐ, Gram payload, task-reach mask] and, for the representation
and sketch sources, the weighted gradient (P numbers, what DDP would send); for the full
source the k × P per-task gradients themselves, which gives the gradient directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..methods.base import Weighting
from ..methods.core import Mean
from ..sources._graph import as_loss_vector, reachable_leaves
from ..sources.blockwise import for_each_block
from ..sources.gram import representation_gram
from ..sources.objects import GramSource, SketchGram
from ..training.schedule import Periodic
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


def _scale_of(scaler: Any) -> float:
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())


def _back_off(scaler: Any, device: torch.device) -> None:
    """Lower the GradScaler's scale as it does after a step with non-finite gradients."""
    if scaler is not None and scaler.is_enabled():
        if getattr(scaler, "_scale", 0) is None:  # lazily initialized: scale() creates it
            scaler.scale(torch.zeros((), device=device))
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def _default_backward(total: Tensor) -> None:
    total.backward()


class DistributedStep:
    """Method + source (+ periodic schedule) over a process group; see the module docstring.

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
        self.method = Mean() if method is None else method
        if not isinstance(self.method, Weighting):
            raise TypeError(f"method must be a taskgrad Weighting (e.g. taskgrad.MGDA()), got {type(self.method).__name__}.")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}.")
        self.group = group
        self.traffic = traffic if traffic is not None else Traffic()
        self.source = DistributedSource(source, group, bucket_numel=bucket_numel, traffic=None)
        self.module = module
        self.schedule = Periodic(period, ema)
        self.nonfinite = nonfinite
        self.debug = debug
        self.bucket_numel = bucket_numel
        self._acc: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def world_size(self) -> int:
        """Number of ranks R."""
        return world_size(self.group)

    def _reduce(self, buf: Tensor, what: str) -> Tensor:
        return all_reduce_sum(buf.contiguous(), self.group, bucket_numel=self.bucket_numel, traffic=self.traffic, what=what)

    def _needs_gram(self) -> bool:
        return "gram" in self.method.needs and self.schedule.due()

    def _skip(self, k: int, L_bar: Tensor, L_loc: Tensor, why: str, bad: int, n: int, scaler: Any) -> DistributedStepResult:
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"{why} is not finite (NaN or Inf) on {bad} of {self.world_size} ranks; every rank stops. "
                "Lower the learning rate, check the inputs, or use nonfinite='skip'."
            )
        _back_off(scaler, L_bar.device)
        nan = torch.full((k,), float("nan"), dtype=L_bar.dtype, device=L_bar.device)
        return DistributedStepResult(nan, None, L_bar, L_loc, refreshed=False, skipped=True,
                                     reason=f"non-finite {why} on {bad} rank(s)", bad_ranks=bad, numel_reduced=n)

    def _weights(self, L_bar: Tensor, gram: Tensor | None) -> tuple[Tensor, Tensor | None, bool] | str:
        """Weights from the global losses/Gram via the schedule; a reason string to skip."""
        if self.schedule.due() or self.schedule.weights is None:
            if gram is not None:
                gram = self.schedule.smooth(gram)
            losses = L_bar.to(gram.dtype) if gram is not None else L_bar
            w = self.method(gram=gram if "gram" in self.method.needs else None, losses=losses).detach()
            if not bool(torch.isfinite(w).all()):
                return f"weights from {type(self.method).__name__}"
            self.schedule.remember(w, torch.arange(w.shape[-1], device=w.device))
            refreshed = True
        else:
            refreshed = False
        assert self.schedule.weights is not None
        return self.schedule.weights.to(L_bar.device), gram, refreshed

    def _check_identical(self, w: Tensor) -> None:
        if self.debug:
            assert_identical(w, self.group, what=f"the weights of {type(self.method).__name__}")

    def _check_sketch_generator(self) -> None:
        src = self.source.inner
        if self.debug and isinstance(src, SketchGram) and src._gen is not None:
            state = src._gen.get_state().to(torch.float64)
            assert_identical(state, self.group, what="the sketch's random generator state (seed every rank the same)")

    # ------------------------------------------------------------------ one step
    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scaler: Any = None,
        backward_fn: Callable[[Tensor], None] | None = None,
    ) -> DistributedStepResult:
        """Weights from the global batch, then ``backward_fn(Σᵢ wᵢ Lᵢʳ)`` (default ``.backward()``).

        Every rank must call it at the same step (it is a collective). With ``scaler`` the
        backward is of s·Σ wᵢLᵢʳ (s the GradScaler's scale); pass ``backward_fn`` to route the
        backward through a framework (e.g. Lightning's ``manual_backward``).
        """
        if self._acc is not None:
            raise RuntimeError("micro-batches are being accumulated: call backward_accumulated() first.")
        if self.debug and self.module is not None:
            assert_in_sync(self.module.parameters(), self.group, what="the model parameters before the step")
        L = as_loss_vector(losses)
        L_loc = L.detach()
        k = L.shape[0]
        s = _scale_of(scaler)
        needs_gram = self._needs_gram()
        payload = None
        if needs_gram:
            self._check_sketch_generator()
            # computed even on a rank with non-finite losses, so random generators stay in step
            payload = self.source.local_payload(L, features=features, params=params, loss_fn=loss_fn, scale=s)
        dtype = torch.float64 if (L_loc.dtype == torch.float64 or (payload is not None and payload.dtype == torch.float64)) else torch.float32
        bad_local = not bool(torch.isfinite(L_loc).all()) or (payload is not None and not bool(torch.isfinite(payload).all()))
        parts = [torch.tensor([float(bad_local)], dtype=dtype, device=L.device),
                 torch.zeros(k, dtype=dtype, device=L.device) if bad_local else L_loc.to(dtype)]
        if payload is not None:
            parts.append(torch.zeros_like(payload, dtype=dtype) if bad_local else payload.to(dtype))
        buf = self._reduce(torch.cat(parts), "step")
        n = buf.numel()
        bad = int(round(float(buf[0])))
        R = self.world_size
        L_bar = buf[1 : 1 + k] / R
        if bad > 0:
            return self._skip(k, L_bar.to(L_loc.dtype), L_loc, "loss or Gram", bad, n, scaler)
        gram = self.source.gram_from_sum(buf[1 + k :], k, features) if payload is not None else None
        if gram is not None and not bool(torch.isfinite(gram).all()):
            return self._skip(k, L_bar, L_loc, "Gram matrix", R, n, scaler)
        out = self._weights(L_bar, gram)
        if isinstance(out, str):
            return self._skip(k, L_bar, L_loc, out, R, n, scaler)
        w, gram, refreshed = out
        self._check_identical(w)
        total = (w.to(L.dtype) * L).sum()
        if s != 1.0:
            total = total * s
        (backward_fn or _default_backward)(total)
        self.schedule.advance()
        return DistributedStepResult(w, gram, L_bar.to(L_loc.dtype), L_loc, refreshed, numel_reduced=n)

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
            sizes = [p.numel() for p in plist]
            offsets = [0]
            for n_ in sizes:
                offsets.append(offsets[-1] + n_)
            dtype = torch.float64 if plist[0].dtype == torch.float64 else torch.float32
            self._acc = {"k": k, "offsets": offsets, "rows": torch.zeros(k, offsets[-1], dtype=dtype, device=L.device),
                         "reach": torch.zeros(k, len(plist), dtype=dtype, device=L.device), "n": 0,
                         "explicit": None, "bad": False, "losses": torch.zeros(k, dtype=dtype, device=L.device),
                         "payload": None, "gen0": None, "scale": _scale_of(scaler), "features": features is not None}
        acc = self._acc
        if k != acc["k"]:
            raise ValueError(f"micro-batch has {k} losses but the accumulation started with {acc['k']}.")
        explicit = weight is not None
        if acc["explicit"] is not None and acc["explicit"] != explicit:
            raise ValueError("pass weight= for every micro-batch or for none of them.")
        acc["explicit"] = explicit
        acc["n"] += 1
        c = 1.0 if weight is None else float(weight)
        s = acc["scale"]
        L_det = L.detach()
        if not bool(torch.isfinite(L_det).all()):
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
            if features is None:
                raise ValueError("the representation source needs features=z for every micro-batch.")
            part = (c * c) * representation_gram(L * s if s != 1.0 else L, features).detach() / (s * s)
        elif kind == "sketch":
            src = self.source.inner
            assert isinstance(src, SketchGram)
            named = src.select(L, loss_fn, params)
            gen = src.generator(next(iter(named.values())).device)
            if acc["gen0"] is None:
                self._check_sketch_generator()
                acc["gen0"] = gen.get_state()
            gen.set_state(acc["gen0"])  # the same directions Ω in every micro-batch
            part = c * src.jacobian(L, loss_fn=loss_fn, params=params).detach()
        if part is not None:
            part = part.reshape(-1).to(rows_buf.dtype)
            acc["payload"] = part if acc["payload"] is None else acc["payload"] + part

    def backward_accumulated(self, scaler: Any = None) -> DistributedStepResult:
        """Weights from the accumulated global batch, then ``.grad`` += the averaged Σᵢ vᵢ ∇Lᵢ.

        A collective. The written gradient is already averaged over ranks (do not let DDP
        all-reduce it again: no ``.backward()`` is involved). With ``scaler``, the gradient is
        multiplied by the scale (as a scaled backward would leave it) for ``scaler.step``.
        """
        acc, self._acc = self._acc, None
        if acc is None:
            raise RuntimeError("nothing accumulated: call accumulate(losses, ...) for each micro-batch first.")
        if self.debug and self.module is not None:
            assert_in_sync(self.module.parameters(), self.group, what="the model parameters before the step")
        plist = self._trainable()
        k, n_micro, R = acc["k"], acc["n"], self.world_size
        c = 1.0 / n_micro if not acc["explicit"] else 1.0
        rows = acc["rows"]
        kind = self.source.kind(True if acc["features"] else None) if "gram" in self.method.needs else None
        full = kind == "jacobian"
        needs_gram = kind is not None and self.schedule.due()
        bad_local = bool(acc["bad"]) or not bool(torch.isfinite(rows).all())
        if acc["payload"] is not None:
            bad_local = bad_local or not bool(torch.isfinite(acc["payload"]).all())
        dtype = rows.dtype
        parts = [torch.tensor([float(bad_local)], dtype=dtype, device=rows.device),
                 torch.zeros(k, dtype=dtype, device=rows.device) if bad_local else acc["losses"] * c,
                 acc["reach"].reshape(-1)]
        if needs_gram and not full:
            assert acc["payload"] is not None
            parts.append(torch.zeros_like(acc["payload"]) if bad_local else acc["payload"])
        if full:
            parts.append(torch.zeros_like(rows).reshape(-1) if bad_local else rows.reshape(-1))
        buf = self._reduce(torch.cat(parts), "accumulated")
        n = buf.numel()
        bad = int(round(float(buf[0])))
        L_bar = buf[1 : 1 + k] / R
        if bad > 0:
            return self._skip(k, L_bar, acc["losses"] * c, "loss or gradient", bad, n, scaler)
        reach = buf[1 + k : 1 + k + k * len(plist)].reshape(k, len(plist)) > 0
        rest = buf[1 + k + k * len(plist) :]
        gram = None
        J_bar = None
        offs = acc["offsets"]
        if full:
            J_bar = rest.reshape(k, -1) * (c / R)
            if needs_gram:
                own = getattr(self.source.inner, "params", None)
                ids = None if own is None else {id(p) for p in own}
                cols = [j for j, p in enumerate(plist)
                        if (ids is None and int(reach[:, j].sum()) >= 2) or (ids is not None and id(p) in ids)]
                G = torch.zeros(k, k, dtype=dtype, device=rows.device)
                for j in cols:
                    block = J_bar[:, offs[j] : offs[j + 1]]
                    G = G + block @ block.T
                gram = 0.5 * (G + G.T)
        elif needs_gram:
            if kind == "representation":
                gram = self.source.gram_from_sum(rest * (c * c), k, True)
            else:
                gram = self.source.gram_from_sum(rest * c, k, None)
        if gram is not None and not bool(torch.isfinite(gram).all()):
            return self._skip(k, L_bar, acc["losses"] * c, "Gram matrix", R, n, scaler)
        out = self._weights(L_bar, gram)
        if isinstance(out, str):
            return self._skip(k, L_bar, acc["losses"] * c, out, R, n, scaler)
        w, gram, refreshed = out
        self._check_identical(w)
        s = _scale_of(scaler)
        if full:
            assert J_bar is not None
            flat = w.to(dtype) @ J_bar
        else:
            flat = (w.to(dtype) @ rows) * c
            self._reduce(flat, "gradient")
            flat = flat / R
            n += flat.numel()
        if s != 1.0:
            flat = flat * s
        for j, p in enumerate(plist):
            if not bool(reach[:, j].any()):
                continue  # no loss reaches it on any rank: leave .grad untouched, as DDP does
            g = flat[offs[j] : offs[j + 1]].reshape(p.shape).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
        self.schedule.advance()
        return DistributedStepResult(w, gram, L_bar, acc["losses"] * c, refreshed, numel_reduced=n)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Method, source and schedule state (identical on every rank; save it from rank 0)."""
        if self._acc is not None:
            raise RuntimeError("cannot checkpoint in the middle of an accumulation window.")
        return {"method": {"type": type(self.method).__name__, "state": self.method.state_dict()},
                "source": self.source.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (load the same checkpoint on every rank)."""
        if state["method"]["type"] != type(self.method).__name__:
            raise ValueError(f"checkpoint is for method {state['method']['type']}, not {type(self.method).__name__}.")
        self.method.load_state_dict(state["method"]["state"])
        self.source.load_state_dict(state["source"])
        self.schedule.load_state_dict(state["schedule"])
