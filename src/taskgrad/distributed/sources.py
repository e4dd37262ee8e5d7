"""Gradient sources across ranks: the Gram of the objective DDP actually optimizes.

Scaling convention. DDP averages gradients over the R ranks, so with rank r's (mean-reduced)
losses Lᵢʳ the objective is L̄ᵢ = (1/R) Σ_r Lᵢʳ — the global batch mean when every rank holds
B/R samples. Its task gradients are ḡᵢ = (1/R) Σ_r gᵢʳ and what each source all-reduces is:

==================  ==============================  ========================  ====================
local source        what rank r contributes         Σ over ranks, then        floats all-reduced
==================  ==============================  ========================  ====================
RepresentationGram  Gʳ = Σ_{b on r} ⟨∂Lᵢʳ/∂z_b,     G = (1/R²) Σ_r Gʳ         k² (+ k + 1 header)
                    ∂Lⱼʳ/∂z_b⟩                      (exact: the z_b of
                                                    different ranks are
                                                    different samples, so
                                                    no cross terms)
SketchGram          Sʳ = Jʳ Ω (k × r), the same Ω   S = (1/R) Σ_r Sʳ,         k·r (+ k + 1)
                    on every rank (same seed)       G = S Sᵀ / r
FullGram /          Jʳ (k × P), P = Σ numel of      J = (1/R) Σ_r Jʳ,         k·P (+ k + 1)
JacobianGram        the compared parameters         G = J Jᵀ
==================  ==============================  ========================  ====================

The parameter Gram does *not* add over ranks (G ≠ Σ_r Jʳ Jʳᵀ: the cross terms ⟨gᵢʳ, gⱼˢ⟩ are
missing), hence the k × P all-reduce; the memory per rank is the k × P Jacobian plus one
all-reduce bucket. The representation Gram does add (per-sample features), which is why it is
the recommended source under DDP: k² numbers per step, independent of the model size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..sources import (
    FullGram,
    GramSource,
    JacobianGram,
    LossSet,
    Part,
    RepresentationGram,
    SketchGram,
    check_params,
    make_source,
    task_gradients,
)
from .comm import Traffic, all_reduce_sum, world_size

__all__ = ["DistributedSource", "local_jacobian"]

KINDS = ("representation", "sketch", "jacobian")


def local_jacobian(
    losses: Sequence[Tensor] | Tensor, params: Sequence[Tensor], dtype: torch.dtype | None = None
) -> Tensor:
    """J (k × P): row i is ∂Lᵢ/∂θ flattened over ``params`` in order (zeros where unreached).

    Each task's gradient through its own subgraph (:func:`~taskgrad.sources.task_gradients`).
    """
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    plist = check_params(params)
    tg = task_gradients(ls)
    if dtype is None:
        dtype = torch.float64 if plist[0].dtype == torch.float64 else torch.float32
    blocks = []
    for p in plist:
        j = tg.index(p)
        blocks.append(
            torch.zeros(ls.k, p.numel(), dtype=dtype, device=p.device)
            if j < 0
            else tg.dense_rows(j, dtype)
        )
    return torch.cat(blocks, dim=1)


class DistributedSource(GramSource):
    """Wrap any :class:`~taskgrad.sources.GramSource` so that ``gram()`` returns, on every rank,
    the Gram of the task gradients of L̄ = (1/R) Σ_r Lʳ (see the module docstring for what is
    all-reduced). Without ``torch.distributed`` it returns the wrapped source's Gram.

    ``gram()`` is a collective: every rank must call it at the same step. Split form:
    :meth:`local_payload`, then :meth:`gram_from_sum` on the summed payload. (Inside a step, pass
    the plain source to :class:`~taskgrad.distributed.DistributedStep`: its reducer does this.)

    Args:
        source: the local source (a GramSource or a name accepted by
            :func:`~taskgrad.sources.make_source`; "auto" picks the representation source when
            features are passed).
        group: the process group (None: the default group).
        bucket_numel: split all-reduces larger than this many numbers (the k × P Jacobian).
        traffic: a :class:`~taskgrad.distributed.comm.Traffic` counting what is sent.
    """

    def __init__(
        self,
        source: GramSource | str = "auto",
        group: Any = None,
        *,
        bucket_numel: int | None = 1 << 22,
        traffic: Traffic | None = None,
    ) -> None:
        if isinstance(source, DistributedSource):
            raise TypeError(
                "the source is already distributed; do not wrap a DistributedSource twice."
            )
        self._spec = source
        self.inner: GramSource | None = source if isinstance(source, GramSource) else None
        if isinstance(source, str):
            make_source(source, True)  # validate the name now
        self.group = group
        self.bucket_numel = bucket_numel
        self.traffic = traffic

    def resolve(self, features: Any) -> GramSource:
        """The wrapped local source (resolved from its name on first use)."""
        if self.inner is None:
            self.inner = make_source(self._spec, features is not None)
        return self.inner

    @property
    def uses_graph(self) -> bool:  # type: ignore[override]
        return self.inner.uses_graph if self.inner is not None else True

    @property
    def payload_power(self) -> int:  # type: ignore[override]
        return self.resolve(None).payload_power

    def kind(self, features: Any = None) -> str:
        """What is all-reduced: "representation", "sketch" or "jacobian"."""
        src = self.resolve(features)
        if isinstance(src, RepresentationGram):
            return "representation"
        if isinstance(src, SketchGram):
            return "sketch"
        if isinstance(src, (FullGram, JacobianGram)):
            return "jacobian"
        raise TypeError(
            f"{type(src).__name__} has no distributed form: its Gram neither adds over samples nor "
            "comes from a Jacobian that does. Use RepresentationGram, SketchGram, FullGram or "
            "JacobianGram."
        )

    def local_payload(
        self,
        losses: Any,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
    ) -> Tensor:
        """This rank's flat contribution (Gʳ, Sʳ or Jʳ); summed over ranks it gives the Gram."""
        self.kind(features)
        ls = losses if isinstance(losses, LossSet) else LossSet(losses)
        part = self.resolve(features).part(
            ls, features=features, params=params, loss_fn=loss_fn, scale=scale, additive=True
        )
        assert part.payload is not None
        return part.payload

    def gram_from_sum(self, total: Tensor, k: int, features: Any = None) -> Tensor:
        """The global Gram (k × k) from the payload summed over the R ranks."""
        return self.resolve(features).gram_of(total, k, world_size(self.group))

    # ------------------------------------------------------------------ GramSource API
    def part(
        self,
        losses,
        *,
        features=None,
        params=None,
        loss_fn=None,
        scale=1.0,
        additive=False,
        want_grads=False,
        all_losses=None,
    ) -> Part:  # noqa: D102
        payload = self.local_payload(
            losses, features=features, params=params, loss_fn=loss_fn, scale=scale
        )
        all_reduce_sum(
            payload.contiguous(),
            self.group,
            bucket_numel=self.bucket_numel,
            traffic=self.traffic,
            what=self.kind(features),
        )
        k = losses.k
        return Part(self.gram_from_sum(payload, k, features).reshape(-1))

    def gram_of(self, payload, k, world=1) -> Tensor:  # noqa: D102
        G = payload.reshape(k, k)
        return 0.5 * (G + G.T)

    @property
    def gram_from_grads(self) -> bool:  # type: ignore[override]
        return self.resolve(None).gram_from_grads

    def gram_of_grads(self, grads) -> Tensor:  # noqa: D102
        return self.resolve(None).gram_of_grads(grads)

    def fix_directions(self, state, losses, *, loss_fn=None, params=None):  # noqa: D102
        return self.resolve(None).fix_directions(state, losses, loss_fn=loss_fn, params=params)

    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        ls = losses if isinstance(losses, LossSet) else LossSet(losses)
        return self.gram_of(
            self.part(ls, features=features, params=params, loss_fn=loss_fn).payload, ls.k
        )

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return (
            {}
            if self.inner is None
            else {"inner": type(self.inner).__name__, "state": self.inner.state_dict()}
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if not state:
            return
        src = self.resolve(None if state["inner"] != "RepresentationGram" else True)
        if type(src).__name__ != state["inner"]:
            raise ValueError(
                f"checkpoint is for source {state['inner']}, not {type(src).__name__}."
            )
        src.load_state_dict(state["state"])
