"""MoDo (Chen et al., JMLR 2024): task weights by projected gradient steps on the simplex."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._common import clone_state
from ..base import Weighting
from ..registry import register_method
from ._zoo_checks import check_cross_matrix, check_real, project_simplex, simplex_state

__all__ = ["MoDo"]


@register_method(
    "modo",
    description="MoDo: one projected-gradient step per call on the simplex weights of min ½λᵀGλ.",
    paper="Chen et al., Three-Way Trade-Off in Multi-Objective Learning, JMLR 2024",
    aliases=("MoDo",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class MoDo(Weighting):
    """MoDo (Chen, Fernando, Ying & Chen, JMLR 2024): projected-gradient simplex weights.

    "Three-way trade-off in multi-objective learning": one projected-gradient step per call on
    λ ↦ ½λᵀGλ + ½ρ‖λ‖² over the simplex,

        λ ← Π_Δ(λ − γ (G + ρI) λ),   w = λ   (λ starts at 1/k).

    The paper's stochastic version feeds the cross-batch matrix J₁J₂ᵀ of two independent
    mini-batches (:meth:`cross_batch`); with :func:`taskgrad.backward` it receives the Gram
    matrix of one batch.
    Same parameters and defaults as TorchJD's MoDoWeighting.
    """

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma = check_real("gamma", gamma, low=0.0, low_open=True)
        self.rho = check_real("rho", rho, low=0.0)
        self._lambda: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        lam = simplex_state("MoDo", self._lambda, gram)
        step = (gram @ lam.unsqueeze(-1)).squeeze(-1) + self.rho * lam
        lam = project_simplex(lam - self.gamma * step)
        self._lambda = lam
        return lam.clone()

    def cross_batch(self, matrix: Tensor) -> Tensor:
        """One call on the paper's cross-batch matrix A = J₁J₂ᵀ (two independent mini-batches;
        not symmetric in general) instead of a Gram matrix; advances the same state.
        """
        check_cross_matrix("MoDo", matrix)
        return self.compute(gram=matrix, losses=None)

    def reset(self) -> None:
        self._lambda = None

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": clone_state(self._lambda)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lambda = clone_state(state_dict["lambda"])
