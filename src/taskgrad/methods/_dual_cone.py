"""Projection onto the dual cone of the task gradients, shared by UPGrad and DualProj.

The projection of Jᵀu onto {x : Jx ≥ 0} is Jᵀv with v = argmin vᵀGv s.t. v ≥ u; writing
v = u + λ, λ ≥ 0 solves the NNLS ½λᵀGλ + (Gu)ᵀλ.
"""

from __future__ import annotations

from torch import Tensor

from ..solvers import nnls
from . import _impl
from ._common import flat_gram

__all__ = ["dual_cone_weights"]


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
        lam = _impl.host_nnls(Gn, Un @ Gn)  # row r: c = G uᵣ (G symmetric)
        return _impl.from_host(lam + Un, (*batch, m, k), gram)
    Gb, _ = flat_gram(gram)
    B = Gb.shape[0]
    Ub = U.to(Gb.dtype).to(Gb.device)
    Q = Gb.unsqueeze(1).expand(B, m, k, k)
    c = Ub @ Gb  # (B, m, k)
    lam = nnls(Q, c, check_input=False)
    return (lam + Ub).to(gram.dtype).reshape(*batch, m, k)
