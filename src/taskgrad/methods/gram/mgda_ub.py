"""MGDA on normalized gradients (l2, loss, loss+l2) as in Sener & Koltun 2018.

Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 (MGDA-UB code).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    check_positive_losses,
    diag_norms,
)
from .._impl import Impl
from .._validate import check_bool, check_choice
from ..base import Weighting
from ..registry import register_method

__all__ = ["MGDAUB"]


@register_method(
    "mgda-ub",
    description="MGDA on normalized gradients (l2, loss, loss+l2) as in Sener & Koltun 2018.",
    paper=(
        "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 "
        "(MGDA-UB code)"
    ),
    aliases=("MGDAUB",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class MGDAUB(Weighting):
    """MGDA with the gradient normalizations of Sener & Koltun (2018, "MGDA-UB" code).

    The gradients are normalized gᵢ/nᵢ with nᵢ = ‖gᵢ‖ ("l2"), Lᵢ ("loss"), Lᵢ‖gᵢ‖ ("loss+l2")
    or 1 ("none"); α = min-norm point of the normalized gradients' hull (Gram D⁻¹GD⁻¹, exact),
    and, as in the reference code, α weighs the raw losses (w = α). With ``scale_weights``
    the weights are α/n instead, so that d is the min-norm point of the normalized gradients.
    ``impl`` (see the module doc): ``"torch"`` calls :func:`~taskgrad.solvers.min_norm_simplex`,
    ``"numba"`` its compiled port (same pivoting and tolerances).
    """

    def __init__(
        self,
        normalization: Literal["l2", "loss", "loss+l2", "none"] = "l2",
        scale_weights: bool = False,
        impl: Impl = "auto",
    ) -> None:
        self.normalization = check_choice(
            "MGDAUB", "normalization", normalization, ("l2", "loss", "loss+l2", "none")
        )
        self.scale_weights = check_bool("MGDAUB", "scale_weights", scale_weights)
        self.impl = _impl.check_impl(impl)
        # per instance: the losses are an input only for the loss normalizations
        self.needs = (  # type: ignore[misc]
            frozenset({"gram", "losses"}) if "loss" in normalization else frozenset({"gram"})
        )

    def compute(self, *, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        n = torch.ones_like(gram[..., 0])
        if "loss" in self.normalization:
            assert losses is not None  # in self.needs for the loss normalizations
            check_positive_losses(f"MGDA-UB({self.normalization!r})", losses)
            n = n * losses.to(gram.dtype)
        if "l2" in self.normalization:
            n = n * diag_norms(gram)
        dead = n <= 0
        inv = torch.where(dead, torch.zeros_like(n), 1.0 / torch.where(dead, torch.ones_like(n), n))
        Gn = gram * inv.unsqueeze(-1) * inv.unsqueeze(-2)
        alpha = _impl.min_norm_weights(Gn, self.impl)
        return alpha * inv if self.scale_weights else alpha
