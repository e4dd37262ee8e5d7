"""DB-MTL: see :class:`DBMTL`."""

from __future__ import annotations

from torch import Tensor

from .._common import (
    check_positive_losses,
    diag_norms,
)
from .._validate import check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["DBMTL"]


@register_method(
    "db-mtl",
    description="DB-MTL gradient-magnitude step: log-loss gradients rescaled to the largest norm.",
    paper="Lin et al., Dual-Balancing for Multi-Task Learning, 2023",
    aliases=("DBMTL", "DB_MTL"),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class DBMTL(Weighting):
    """DB-MTL's gradient-magnitude balancing step (Lin et al., 2023), in Gram form.

    DB-MTL trains on log-losses; the gradient of log(Lᵢ + ε) is g̃ᵢ = gᵢ/(Lᵢ + ε) with norm
    ‖g̃ᵢ‖ = σᵢ/(Lᵢ + ε). Each is rescaled to the largest norm: d = Σᵢ (max_j‖g̃ⱼ‖/(‖g̃ᵢ‖ + ε'))·g̃ᵢ,
    i.e. w = max_j‖g̃ⱼ‖ / ((‖g̃ᵢ‖ + ε')(Lᵢ + ε)) on the raw losses. Needs the Gram diagonal and
    the losses (> −ε). The paper's EMA of past gradient vectors (β > 0) is not expressible from
    the current Gram matrix and is not implemented: this is its β = 0 step (as in LibMTL with β=0).
    """

    needs = frozenset({"gram", "losses"})

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = check_real("DBMTL", "eps", eps, low=0.0)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None and losses is not None
        check_positive_losses("DB-MTL", losses, -self.eps)
        Ld = losses.to(gram.dtype) + self.eps
        norms = diag_norms(gram) / Ld
        scale = norms.amax(-1, keepdim=True) / (norms + self.eps)
        return scale / Ld
