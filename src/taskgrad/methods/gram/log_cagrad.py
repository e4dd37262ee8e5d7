"""LOG-CAGrad (the FAMO repository's baseline): CAGrad on the gradients of the log losses."""

from __future__ import annotations

from ..registry import register_method
from ._log_loss import LogLossWeighting
from .cagrad import CAGrad

__all__ = ["LogCAGrad"]


@register_method(
    "log-cagrad",
    description="LOG-CAGrad: CAGrad on the gradients of the log losses (FAMO repository baseline).",
    paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023 (baseline)",
    aliases=("LogCAGrad", "LOG_CAGrad"),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class LogCAGrad(LogLossWeighting):
    """LOG-CAGrad (Liu et al., FAMO, NeurIPS 2023, baseline): CAGrad with parameter ``c`` on the
    gradients gᵢ/Lᵢ of log Lᵢ, with the reference's scaling: the CAGrad direction divided by
    1 + c² (``rescale=1``) and multiplied by k, so wᵢ = k·w'ᵢ/(1 + c²)/Lᵢ with w' CAGrad's
    weights on G ⊘ LLᵀ. The reference also clips the shared gradient to norm 1 (a step option).
    """

    def __init__(self, c: float = 0.4, eps: float = 0.0) -> None:
        self.c = c
        super().__init__(CAGrad(c=c, rescale=1), eps=eps, multiplier="k")
