"""Exact primary/auxiliary projection: closest to g0 raising no auxiliary loss."""

from __future__ import annotations

import torch
from torch import Tensor

from ...solvers import primary_aux
from .._validate import check_bool, check_int, check_real
from ..base import Weighting
from ..registry import register_method
from ._progress import progress_margin_weights

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

    Progress margin (``progress`` = τ > 0, one primary, no ``margin``): every auxiliary gets at
    least τ of the first-order progress of a step of the primary's length along its own
    normalized gradient, ⟨u, gᵢ/‖gᵢ‖⟩ ≥ τ‖g₀‖; u = g₀ + Σλᵢgᵢ with λ ≥ 0 minimizing the dual
    ½‖g₀ + Σλᵢgᵢ‖² − τ‖g₀‖Σλᵢ‖gᵢ‖ (see :mod:`taskgrad.methods.auxiliary._progress`). When no u
    meets every margin (0 in the hull of the auxiliary gradients) the step is the τ = 0 one.
    ``last_info`` holds the last call's ``active`` constraints (λᵢ > 0, shape (..., k−1)) and
    whether it was ``infeasible``.
    """

    def __init__(
        self,
        n_primary: int = 1,
        eps: float = 0.0,
        margin: float = 0.0,
        relative_margin: bool = False,
        progress: float = 0.0,
    ) -> None:
        self.n_primary = check_int("PrimaryAux", "n_primary", n_primary, low=1)
        self.eps = check_real("PrimaryAux", "eps", eps, low=0.0)
        self.margin = check_real("PrimaryAux", "margin", margin, low=0.0)
        self.relative_margin = check_bool("PrimaryAux", "relative_margin", relative_margin)
        progress = check_real(
            "PrimaryAux", "progress (a fraction of each auxiliary's progress)", progress, low=0.0
        )
        if progress > 0 and (n_primary != 1 or margin > 0):
            raise ValueError(
                "progress works with one primary task and margin=0; pass n_primary=1 and no margin."
            )
        self.progress = progress
        self._last_info: dict[str, Tensor] | None = None

    @property
    def last_info(self) -> dict[str, Tensor] | None:
        """``{"active": (..., k−1) bool, "infeasible": (...) bool}`` of the last call (one
        primary).
        """
        return self._last_info

    def compute(self, *, gram: Tensor) -> Tensor:
        if self.progress > 0:
            w, active, infeasible = progress_margin_weights(gram, self.progress)
            self._last_info = {"active": active, "infeasible": infeasible}
            return w
        w = primary_aux(
            gram,
            n_primary=self.n_primary,
            eps=self.eps,
            margin=self.margin,
            relative_margin=self.relative_margin,
            check_input=False,
        )
        if self.n_primary == 1:
            self._last_info = {
                "active": w[..., 1:] > 0,
                "infeasible": torch.zeros(w.shape[:-1], dtype=torch.bool, device=w.device),
            }
        return w
