"""PrimaryAux: see :class:`PrimaryAux`."""

from __future__ import annotations

from torch import Tensor

from ...solvers import primary_aux
from ..base import Weighting
from ..registry import register_method

__all__ = ["PrimaryAux"]


@register_method(
    "primary-aux",
    description="Exact primary/auxiliary projection: closest to g0 raising no auxiliary loss.",
    aliases=("PrimaryAux",),
    defined="everywhere",
    non_conflicting=True,
    permutation_equivariant=False,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class PrimaryAux(Weighting):
    """Primary/auxiliary projection: the update closest to the primary gradient that raises no
    auxiliary loss to first order.

    With one primary: u = g0 + Σ λᵢgᵢ with λ ≥ 0 minimizing ‖u‖², so ⟨u, gᵢ⟩ ≥ 0 (≥ margin·‖u‖
    with a robust margin) for every auxiliary. With several primaries, the min-norm common
    descent direction of the primaries subject to the same constraints (see
    :func:`taskgrad.solvers.primary_aux`). The primary tasks are the first ``n_primary``.
    """

    def __init__(
        self, n_primary: int = 1, eps: float = 0.0, margin: float = 0.0, relative_margin: bool = False
    ) -> None:
        if not isinstance(n_primary, int) or n_primary < 1:
            raise ValueError(f"n_primary must be a positive int, got {n_primary!r}.")
        if margin < 0:
            raise ValueError(f"margin must be ≥ 0, got {margin!r}.")
        self.n_primary = n_primary
        self.eps = eps
        self.margin = margin
        self.relative_margin = relative_margin

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        return primary_aux(
            gram,
            n_primary=self.n_primary,
            eps=self.eps,
            margin=self.margin,
            relative_margin=self.relative_margin,
            check_input=False,
        )
