"""SDMGrad (Xiao et al., NeurIPS 2023): stochastic direction-oriented multi-objective gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import clone_state
from ..base import Weighting
from ..registry import register_method
from ._zoo_checks import (
    check_cross_matrix,
    check_int,
    check_real,
    check_vector,
    project_simplex,
    simplex_state,
    task_vector,
)

__all__ = ["SDMGrad"]


@register_method(
    "sdmgrad",
    description="SDMGrad: warm-started projected SGD towards a preferred direction on the simplex.",
    paper="Xiao et al., Direction-oriented Multi-objective Learning, NeurIPS 2023",
    aliases=("SDMGrad",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class SDMGrad(Weighting):
    """SDMGrad (Xiao, Ban & Ji, "Direction-oriented multi-objective learning", NeurIPS 2023).

    With A = G / (mean_i √Gᵢᵢ)² (scale-free) and w̃ = ``pref_vector`` (default 1/k), each call
    runs ``n_iter`` steps of projected heavy-ball SGD on w ↦ ½(w + λw̃)ᵀA(w + λw̃) over the
    simplex (v ← momentum·v + A(w + λw̃), w ← Π_Δ(w − lr·v)), warm-started from the previous
    call, and returns (w + λw̃)/(1 + λ), λ = ``lambda_``. The paper feeds J₁J₂ᵀ from two
    mini-batches (:meth:`cross_batch`); :func:`taskgrad.backward` gives the Gram matrix of one.
    TorchJD's defaults.
    """

    def __init__(
        self,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        lambda_: float = 0.3,
        pref_vector: Tensor | None = None,
    ) -> None:
        self.lr = check_real("lr", lr, low=0.0, low_open=True)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.n_iter = check_int("n_iter", n_iter, low=1)
        self.lambda_ = check_real("lambda_", lambda_, low=0.0)
        self.pref_vector = check_vector("pref_vector", pref_vector)
        self._w: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        k = gram.shape[-1]
        pref = task_vector("pref_vector", self.pref_vector, k, 1.0 / k, gram)
        w = simplex_state("SDMGrad", self._w, gram)
        scale = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt().mean(-1)
        A = gram / (scale**2 + 1e-8)[..., None, None]
        velocity: Tensor | None = None
        for _ in range(self.n_iter):
            grad = (A @ (w + self.lambda_ * pref).unsqueeze(-1)).squeeze(-1)
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = project_simplex(w - self.lr * velocity)
        self._w = w
        return (w + self.lambda_ * pref) / (1.0 + self.lambda_)

    def cross_batch(self, matrix: Tensor) -> Tensor:
        """One call on the paper's cross-batch matrix A = J₁J₂ᵀ (two independent mini-batches;
        not symmetric in general) instead of a Gram matrix; advances the same state.
        """
        check_cross_matrix("SDMGrad", matrix)
        return self.compute(gram=matrix, losses=None)

    def reset(self) -> None:
        self._w = None

    def state_dict(self) -> dict[str, Any]:
        return {"w": clone_state(self._w)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w = clone_state(state_dict["w"])
