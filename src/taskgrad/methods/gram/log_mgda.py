"""LOG-MGDA (the FAMO repository's baseline): MGDA on the gradients of the log losses."""

from __future__ import annotations

from ..registry import register_method
from ._log_loss import LogLossWeighting
from .mgda import MGDA

__all__ = ["LogMGDA"]


@register_method(
    "log-mgda",
    description="LOG-MGDA: MGDA on the gradients of the log losses (FAMO repository baseline).",
    paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023 (baseline)",
    aliases=("LogMGDA", "LOG_MGDA"),
    defined="positive-losses",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class LogMGDA(LogLossWeighting):
    """LOG-MGDA (Liu et al., FAMO, NeurIPS 2023, baseline): w' = MGDA on the gradients of
    log(Lᵢ + eps) (Gram G ⊘ (L+eps)(L+eps)ᵀ), applied to the loss Σ w'ᵢ log(Lᵢ + eps) / c with
    c = Σ w'ᵢ/(Lᵢ + eps): wᵢ = (w'ᵢ/(Lᵢ + eps)) / c, so Σ w = 1. MGDA is solved exactly (the
    reference uses a Frank-Wolfe approximation).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__(MGDA(), eps=eps, normalize=True)
