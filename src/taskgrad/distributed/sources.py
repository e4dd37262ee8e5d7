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

from ..sources._graph import as_loss_vector, check_params, shared_parameters
from ..sources.blockwise import for_each_block
from ..sources.gram import representation_gram
from ..sources.objects import FullGram, GramSource, JacobianGram, RepresentationGram, SketchGram, make_source
from .comm import Traffic, all_reduce_sum, world_size

__all__ = ["DistributedSource", "local_jacobian"]

KINDS = ("representation", "sketch", "jacobian")


def local_jacobian(losses: Tensor, params: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """J (k × P): row i is ∂Lᵢ/∂θ flattened over ``params`` in order (zeros where unreached).

    One batched backward (:func:`~taskgrad.sources.blockwise.for_each_block`); memory k × P.
    """
    L = as_loss_vector(losses)
    plist = check_params(params)
    k = L.shape[0]
    sizes = [p.numel() for p in plist]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    if dtype is None:
        dtype = torch.float64 if plist[0].dtype == torch.float64 else torch.float32
    J = torch.zeros(k, offsets[-1], dtype=dtype, device=L.device)

    def consume(j: int, rows: Tensor) -> None:
        J[:, offsets[j] : offsets[j + 1]] += rows.reshape(k, -1).to(dtype)

    for_each_block(L, plist, consume)
    return J


class DistributedSource(GramSource):
    """Wrap any :class:`~taskgrad.sources.GramSource` so that ``gram()`` returns, on every rank,
    the Gram of the task gradients of L̄ = (1/R) Σ_r Lʳ (see the module docstring for what is
    all-reduced). Without ``torch.distributed`` it returns the wrapped source's Gram.

    ``gram()`` is a collective: every rank must call it at the same step. Split form for callers
    that pack it with other numbers into one all-reduce: :meth:`local_payload`, then
    :meth:`gram_from_sum` on the summed payload.

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
            raise TypeError("the source is already distributed; do not wrap a DistributedSource twice.")
        self._spec = source
        self.inner: GramSource | None = source if isinstance(source, GramSource) else None
        if isinstance(source, str):
            make_source(source, True)  # validate the name now
        self.group = group
        self.bucket_numel = bucket_numel
        self.traffic = traffic

    # ------------------------------------------------------------------ pieces
    def resolve(self, features: Any) -> GramSource:
        """The wrapped local source (resolved from its name on first use)."""
        if self.inner is None:
            self.inner = make_source(self._spec, features is not None)
        return self.inner

    @property
    def uses_graph(self) -> bool:  # type: ignore[override]
        return self.inner.uses_graph if self.inner is not None else True

    def kind(self, features: Any = None) -> str:
        """"representation", "sketch" or "jacobian": what is all-reduced."""
        src = self.resolve(features)
        if isinstance(src, RepresentationGram):
            return "representation"
        if isinstance(src, SketchGram):
            return "sketch"
        if isinstance(src, (FullGram, JacobianGram)):
            return "jacobian"
        raise TypeError(
            f"{type(src).__name__} has no distributed form: its Gram neither adds over samples nor "
            "comes from a Jacobian that does. Use RepresentationGram, SketchGram, FullGram or JacobianGram."
        )

    def compared_params(self, losses: Tensor, params: Sequence[Tensor] | None) -> list[Tensor]:
        """The parameters whose gradients the full-parameter source compares, in a fixed order."""
        if params is not None:
            return check_params(params)
        own = getattr(self.inner, "params", None)
        if own is not None:
            return check_params(own)
        return shared_parameters(losses)

    def local_payload(
        self,
        losses: Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
    ) -> Tensor:
        """This rank's flat contribution (Gʳ, Sʳ or Jʳ); summed over ranks it gives the Gram.

        ``scale``: the losses are multiplied by it for the backward through the graph (a
        GradScaler's scale, against underflow under float16) and the result divided back.
        """
        kind = self.kind(features)
        L = as_loss_vector(losses)
        src = self.inner
        assert src is not None
        if kind == "representation":
            if features is None:
                raise ValueError(
                    "the representation source needs features=z, the tensor the task heads were "
                    "computed from (under DDP with find_unused_parameters=True, capture it inside "
                    "the module with taskgrad.distributed.FeatureHook: DDP's outputs are copies)."
                )
            G = representation_gram(L * scale if scale != 1.0 else L, features)
            return (G / (scale * scale) if scale != 1.0 else G).detach().reshape(-1)
        if kind == "sketch":
            assert isinstance(src, SketchGram)
            return src.jacobian(L, loss_fn=loss_fn, params=params).detach().reshape(-1)
        plist = self.compared_params(L, params)
        J = local_jacobian(L * scale if scale != 1.0 else L, plist)
        return (J / scale if scale != 1.0 else J).detach().reshape(-1)

    def gram_from_sum(self, total: Tensor, k: int, features: Any = None) -> Tensor:
        """The global Gram (k × k) from the payload summed over the R ranks."""
        R = world_size(self.group)
        kind = self.kind(features)
        if kind == "representation":
            G = total.reshape(k, k) / (R * R)
        elif kind == "sketch":
            assert isinstance(self.inner, SketchGram)
            S = total.reshape(k, -1) / R
            G = S @ S.T / self.inner.r
        else:
            J = total.reshape(k, -1) / R
            G = J @ J.T
        return 0.5 * (G + G.T)

    # ------------------------------------------------------------------ GramSource API
    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        L = as_loss_vector(losses)
        payload = self.local_payload(L, features=features, params=params, loss_fn=loss_fn).contiguous()
        all_reduce_sum(payload, self.group, bucket_numel=self.bucket_numel, traffic=self.traffic, what=self.kind(features))
        return self.gram_from_sum(payload, L.shape[0], features)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {} if self.inner is None else {"inner": type(self.inner).__name__, "state": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if not state:
            return
        src = self.resolve(None if state["inner"] != "RepresentationGram" else True)
        if type(src).__name__ != state["inner"]:
            raise ValueError(f"checkpoint is for source {state['inner']}, not {type(src).__name__}.")
        src.load_state_dict(state["state"])
