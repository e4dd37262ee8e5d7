"""Projection onto the dual cone of the task gradients, shared by UPGrad and DualProj.

The projection of Jᵀu onto {x : Jx ≥ 0} is Jᵀv with v = argmin vᵀGv s.t. v ≥ u; writing
v = u + λ, λ ≥ 0 solves the NNLS ½λᵀGλ + (Gu)ᵀλ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers import nnls
from . import _impl
from ._common import flat_gram, work_dtype
from ._impl import Impl
from ._validate import check_vector
from .base import Weighting

__all__ = ["DualConeWeighting", "dual_cone_weights", "torchjd_gram"]


def torchjd_gram(gram: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """TorchJD's QuadprogProjector input: G/tr(G) (0 when tr(G) < norm_eps) + reg_eps·I.

    With norm_eps = reg_eps = 0 the projection is unchanged (it is invariant to scaling G); the
    defaults of TorchJD (1e-4 and 1e-4) perturb it, and passing them reproduces its numbers.
    """
    for name, v in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not v >= 0
            or v == float("inf")
        ):
            raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}.")
    if norm_eps == 0 and reg_eps == 0:
        return gram
    tr = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    small = (tr < norm_eps) | (tr <= 0)
    G = torch.where(
        small, torch.zeros_like(gram), gram / torch.where(small, torch.ones_like(tr), tr)
    )
    return G + reg_eps * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)


def dual_cone_weights(gram: Tensor, U: Tensor, impl: str = "auto") -> Tensor:
    """V (..., m, k) with Jᵀvᵣ the projection of Jᵀuᵣ onto the dual cone of the gradients, for the
    m rows uᵣ of U (m, k) and each Gram matrix of G (..., k, k): vᵣ = argmin vᵀGv s.t. v ≥ uᵣ.

    All m·B problems are one batched :func:`~taskgrad.solvers.nnls` call (``impl="torch"``) or
    calls of its compiled port on the host (``"numba"``, see :mod:`taskgrad.methods._impl`).
    """
    batch, k = gram.shape[:-2], gram.shape[-1]
    m = U.shape[0]
    if _impl.use_host(impl, gram):
        Gn = _impl.host_gram(gram)
        Un = _impl.host(U)
        lam_host = _impl.host_nnls(Gn, Un @ Gn)  # row r: c = G uᵣ (G symmetric)
        return _impl.from_host(lam_host + Un, (*batch, m, k), gram)
    Gb, _ = flat_gram(gram)
    B = Gb.shape[0]
    Ub = U.to(Gb.dtype).to(Gb.device)
    Q = Gb.unsqueeze(1).expand(B, m, k, k)
    c = Ub @ Gb  # (B, m, k)
    lam = nnls(Q, c, check_input=False)
    return (lam + Ub).to(gram.dtype).reshape(*batch, m, k)


class DualConeWeighting(Weighting):
    """Shared constructor and input preparation of the dual-cone projections (UPGrad, DualProj).

    Holds the preference vector p (default 1/k), the projection backend ``impl`` and TorchJD's
    ``norm_eps``/``reg_eps`` (see :func:`torchjd_gram`); subclasses implement ``compute``.
    """

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        impl: Impl = "auto",
        norm_eps: float = 0.0,
        reg_eps: float = 0.0,
    ) -> None:
        self.pref_vector = check_vector(type(self).__name__, "pref_vector", pref_vector)
        self.impl = _impl.check_impl(impl)
        torchjd_gram(torch.zeros(1, 1), norm_eps, reg_eps)  # validates both
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def _pref_and_gram(self, gram: Tensor) -> tuple[Tensor, Tensor]:
        """The preference vector p (k,) for this Gram matrix, and G as the projection reads it."""
        p = _impl.check_pref(
            self.pref_vector, gram.shape[-1], gram.new_empty(0, dtype=work_dtype(gram))
        )
        return p, torchjd_gram(gram, self.norm_eps, self.reg_eps)
