"""Log-loss variants of Gram methods (the FAMO repository's LOG-MGDA, LOG-CAGrad, LOG-IMTLG).

The gradient of log(Lᵢ + ε) is gᵢ/(Lᵢ + ε), so the Gram matrix of the log-loss gradients is
G ⊘ ((L + ε)(L + ε)ᵀ); the inner method's weights w' on the log gradients become the weights
wᵢ = m·w'ᵢ/(Lᵢ + ε) on the raw ones (m = 1, or k to match a code that multiplies by k).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import check_positive_losses
from ..base import Weighting

__all__ = ["LogLossWeighting"]


class LogLossWeighting(Weighting):
    """Run ``method`` on the gradients of log(Lᵢ + eps): w = m · w'(G ⊘ (L+eps)(L+eps)ᵀ) ⊘ (L +
    eps).

    ``normalize`` divides by Σⱼ w'ⱼ/(Lⱼ + eps) (LOG-MGDA's convention, so Σ w = 1 when Σ w' = 1);
    ``multiplier`` is m. Needs the losses (> −eps).
    """

    needs = frozenset({"gram", "losses"})

    def __init__(
        self, method: Weighting, eps: float, normalize: bool = False, multiplier: str | float = 1.0
    ) -> None:
        if not eps >= 0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}.")
        self._method = method
        self.eps = float(eps)
        self._normalize = normalize
        self._multiplier = multiplier

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None and losses is not None
        check_positive_losses(type(self).__name__, losses, offset=-self.eps)
        shifted = (losses + self.eps).to(gram.dtype)
        log_gram = gram / (shifted.unsqueeze(-1) * shifted.unsqueeze(-2))
        w_log = self._method(gram=log_gram, losses=torch.log(shifted))
        w = w_log / shifted
        if self._normalize:
            w = w / w.sum(-1, keepdim=True)
        m = gram.shape[-1] if self._multiplier == "k" else float(self._multiplier)
        return m * w

    def reset(self) -> None:
        self._method.reset()

    def state_dict(self) -> dict[str, Any]:
        return self._method.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._method.load_state_dict(state_dict)
