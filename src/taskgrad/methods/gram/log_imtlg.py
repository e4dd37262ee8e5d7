"""LOG-IMTLG (the FAMO repository's baseline): IMTL-G on the gradients of the log losses."""

from __future__ import annotations

from ..registry import register_method
from ._log_loss import LogLossWeighting
from .imtl_g import IMTLG

__all__ = ["LogIMTLG"]


@register_method(
    "log-imtl-g",
    description="LOG-IMTLG: IMTL-G on the gradients of the log losses (FAMO repository baseline).",
    paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023 (baseline)",
    aliases=("LogIMTLG", "LOG_IMTLG", "log-imtl"),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class LogIMTLG(LogLossWeighting):
    """LOG-IMTLG (Liu et al., FAMO, NeurIPS 2023, baseline): α = IMTL-G on the gradients of
    log(Lᵢ + eps) (equal projections on every unit log-gradient, Σα = 1), applied to the loss
    Σ αᵢ log(Lᵢ + eps): wᵢ = αᵢ/(Lᵢ + eps).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__(IMTLG(), eps=eps)
