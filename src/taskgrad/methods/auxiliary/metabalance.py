"""MetaBalance (He et al., WWW 2022): auxiliary gradients rescaled toward the primary's norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import clone_state, diag_norms
from .._validate import check_choice, check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["MetaBalance"]

_STRATEGIES = ("all", "reduce", "enlarge")


@register_method(
    "metabalance",
    description="MetaBalance: each auxiliary gradient moved toward the primary's average norm.",
    paper=(
        "He et al., MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient "
        "Magnitudes of Auxiliary Tasks, WWW 2022"
    ),
    aliases=("MetaBalance", "meta-balance"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class MetaBalance(Weighting):
    """MetaBalance: task 0 is the primary; auxiliary i gets wᵢ = r·m₀/mᵢ + (1 − r).

    mᵢ ← β mᵢ + (1 − β)‖gᵢ‖ (from 0) are moving averages of the gradient norms (‖gᵢ‖ = √Gᵢᵢ),
    updated once per call; r ∈ [0, 1] is the relax factor (r = 1: every auxiliary gradient
    gets the primary's magnitude; r = 0: the plain sum). The update is d = g₀ + Σᵢ wᵢgᵢ, the
    authors' ``p.grad = (m₀/mᵢ)·gᵢ·r + gᵢ·(1 − r)`` summed over tasks. ``strategy`` chooses which
    auxiliaries are rescaled (Section 4.2 of the paper): "all", "reduce" (only those with
    mᵢ > m₀) or "enlarge" (only those with mᵢ < m₀); the others keep wᵢ = 1. An auxiliary whose
    average norm is 0 (its gradient has always been zero) keeps wᵢ = 1.

    The authors apply the rule to each parameter tensor separately; a Gram matrix of the
    whole shared gradient gives the version with one block (the same as theirs for a model with
    one shared parameter tensor). State: the averages m and the call count.
    """

    # state, set by reset()
    _m: Tensor | None
    _n: int

    def __init__(self, relax_factor: float = 0.7, beta: float = 0.9, strategy: str = "all") -> None:
        self.relax_factor = check_real(
            "MetaBalance", "relax_factor", relax_factor, low=0.0, high=1.0
        )
        self.beta = check_real("MetaBalance", "beta", beta, low=0.0, high=1.0, high_open=True)
        self.strategy = check_choice("MetaBalance", "strategy", strategy, _STRATEGIES)
        self.reset()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        sig = diag_norms(gram)
        if self._m is None:
            self._m = torch.zeros_like(sig)
        elif self._m.shape != sig.shape:
            raise ValueError(
                f"MetaBalance's state is for {tuple(self._m.shape)} norms, got a Gram for "
                f"{tuple(sig.shape)}; call reset()."
            )
        m = self.beta * self._m.to(sig.dtype) + (1.0 - self.beta) * sig
        self._m = m
        self._n += 1
        m0 = m[..., :1]
        alive = m > 0
        ratio = torch.where(
            alive, m0 / torch.where(alive, m, torch.ones_like(m)), torch.ones_like(m)
        )
        w = self.relax_factor * ratio + (1.0 - self.relax_factor)
        apply = alive.clone()
        if self.strategy == "reduce":
            apply &= m > m0
        elif self.strategy == "enlarge":
            apply &= m < m0
        w = torch.where(apply, w, torch.ones_like(w))
        w[..., 0] = 1.0
        return w

    def reset(self) -> None:
        self._m = None
        self._n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"m": clone_state(self._m), "n": self._n}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._m = clone_state(state_dict["m"])
        self._n = int(state_dict["n"])
