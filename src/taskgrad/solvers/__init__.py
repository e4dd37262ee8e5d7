"""Pure, batched solvers on Gram matrices G = J Jᵀ of shape (..., k, k).

* :func:`nnls`: x ≥ 0 minimizing ½ xᵀQx + cᵀx (the building block).
* :func:`primary_aux`: the primary/auxiliary projection (and the mixed problem).
* :func:`min_norm_simplex`: MGDA's min-norm point of the convex hull.
* :func:`primary_aux_frank_wolfe`: the reference coordinate iteration.
"""

from ._checks import check_finite, check_float, check_gram
from .nnls import SolverInfo, certificate_tolerance, nnls
from .primary_aux import (
    min_norm_simplex,
    primary_aux,
    primary_aux_frank_wolfe,
    primary_aux_kkt_residual,
)

__all__ = [
    "SolverInfo",
    "certificate_tolerance",
    "check_finite",
    "check_float",
    "check_gram",
    "min_norm_simplex",
    "nnls",
    "primary_aux",
    "primary_aux_frank_wolfe",
    "primary_aux_kkt_residual",
]
