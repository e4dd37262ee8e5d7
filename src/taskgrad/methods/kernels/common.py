"""Shared bits of the method kernels: the solvers' compiled NNLS / min-norm port and its options
(re-exported from :mod:`taskgrad.solvers._compiled`), and xᵀGx.
"""

from __future__ import annotations

from ...solvers._compiled import (  # noqa: F401  (re-exported for the method kernels)
    _ENTRY,
    _INTERNAL,
    EPS,
    HAVE_NUMBA,
    NNLS_RIDGE,
    NOT_PD,
    OK,
    TINY,
    _cho_solve,
    _cholesky,
    _min_norm_one,
    min_norm,
    njit,
    nnls_rows,
)

__all__ = ["HAVE_NUMBA", "NOT_PD", "OK", "min_norm", "nnls_rows", "quad", "xGx"]


@njit(**_INTERNAL)
def xGx(x, G):
    """xᵀGx."""
    k = x.shape[0]
    q = 0.0
    for i in range(k):
        t = 0.0
        for j in range(k):
            t += G[i, j] * x[j]
        q += x[i] * t
    return q


@njit(**_INTERNAL)
def quad(w, G):
    """max(wᵀGw, 0): ‖Jᵀw‖² with the rounding below zero removed."""
    return max(xGx(w, G), 0.0)
