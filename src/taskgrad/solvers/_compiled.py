"""Compiled (numba) non-negative QP for one problem at a time on the host.

The non-negative QP x ≥ 0 minimizing ½xᵀQx + cᵀx by block principal pivoting with a
Lawson–Hanson fallback — a loop-for-loop port of :mod:`taskgrad.solvers._single` with the same
tolerances, the same rescaling as :func:`taskgrad.solvers.nnls` and the same decisions, so the two
agree to rounding — and the min-norm point of a convex hull (MGDA) on top of it. At k ≈ 40 the
compiled loops cost a few µs where batched torch operators pay ~5–20 µs each; the method kernels
of :mod:`taskgrad.methods._kernels` (CAGrad, Nash-MTL/FairGrad, UPGrad) call these from compiled
code. ``tests/methods/test_methods_kernels.py`` compares them with :func:`taskgrad.solvers.nnls`.

Compilation: ``njit(cache=True)``; the first call after an install compiles what it uses, later
processes load the machine code from ``__pycache__``. Numba's cache does not notice an edit of
*this* file from kernels in other modules that call it: after editing it, delete the
``__pycache__`` entries of :mod:`taskgrad.methods._kernels` too (or set ``NUMBA_DISABLE_JIT=1``
while developing).

Layout: float64 C-contiguous NumPy arrays; errors are status codes (numba cannot raise the
library's exception types), turned into exceptions by the Python callers.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import HAVE_NUMBA, njit  # noqa: F401  (HAVE_NUMBA re-exported; without numba the kernels run as Python)


TINY = np.finfo(np.float64).tiny
EPS = np.finfo(np.float64).eps
# float64 tolerances of taskgrad.solvers (nnls._tolerances): feasibility and ridge
NNLS_TOL = 1e-11
NNLS_RIDGE = 1e-13

# compile options: float semantics as NumPy/torch (x/0 = ±inf or NaN, no exceptions), cached on
# disk; helpers called only from compiled code get no CPython wrapper (less to compile)
_ENTRY = {"cache": True, "error_model": "numpy"}
_INTERNAL = {"cache": True, "error_model": "numpy", "no_cpython_wrapper": True}

# status codes returned by the kernels
OK = 0
NOT_PD = 1  # a free block stayed indefinite with a ridge of 1e-2 (LinAlgError in the solvers)


# --------------------------------------------------------------------------------------------
# Cholesky


@njit(**_INTERNAL)
def _cholesky(M, n, L):
    """Lower Cholesky factor of M[:n, :n] into L[:n, :n]; returns 0, or j + 1 at the first
    non-positive pivot (LAPACK's potrf convention)."""
    for j in range(n):
        s = M[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:  # also catches NaN
            return j + 1
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            t = M[i, j]
            for p in range(j):
                t -= L[i, p] * L[j, p]
            L[i, j] = t / d
    return 0


@njit(**_INTERNAL)
def _cho_solve(L, n, b, out):
    """out[:n] = (L Lᵀ)⁻¹ b[:n] (forward then backward substitution; out may alias b)."""
    for i in range(n):
        t = b[i]
        for p in range(i):
            t -= L[i, p] * out[p]
        out[i] = t / L[i, i]
    for i in range(n - 1, -1, -1):
        t = out[i]
        for p in range(i + 1, n):
            t -= L[p, i] * out[p]
        out[i] = t / L[i, i]


# --------------------------------------------------------------------------------------------
# Non-negative QP (port of taskgrad.solvers._single)


@njit(**_INTERNAL)
def _solve_block(Q, c, free, ridge, x, M, L, r, s):
    """x with x_F = −(Q_FF + ridge·I)⁻¹ c_F (one step of iterative refinement), x_A = 0.
    Returns a status (NOT_PD when even a ridge of 1e-2 leaves the block indefinite)."""
    k = c.shape[0]
    idx = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(k):
        x[i] = 0.0
        if free[i]:
            idx[n] = i
            n += 1
    if n == 0:
        return OK
    for a in range(n):
        for b in range(n):
            M[a, b] = Q[idx[a], idx[b]]
        M[a, a] += ridge
    info = _cholesky(M, n, L)
    bump = ridge
    while info != 0:  # rounding made the block indefinite: a larger ridge, as the solvers do
        bump *= 100.0
        if bump > 1e-2:
            return NOT_PD
        for a in range(n):
            M[a, a] += bump
        info = _cholesky(M, n, L)
    for a in range(n):
        r[a] = -c[idx[a]]
    _cho_solve(L, n, r, s)
    # one step of iterative refinement: s += (LLᵀ)⁻¹ (r − M s)
    for a in range(n):
        t = r[a]
        for b in range(n):
            t -= M[a, b] * s[b]
        r[a] = t
    _cho_solve(L, n, r, r)
    for a in range(n):
        x[idx[a]] = s[a] + r[a]
    return OK


@njit(**_INTERNAL)
def _residual_y(Q, c, x, free, y):
    """y = Qx + c off the free set, 0 on it."""
    k = c.shape[0]
    for i in range(k):
        if free[i]:
            y[i] = 0.0
        else:
            t = 0.0
            for j in range(k):
                t += Q[i, j] * x[j]
            y[i] = t + c[i]


@njit(**_INTERNAL)
def _block_pivoting(Q, c, fixed_zero, tol, ridge, max_iter, free, x, M, L, r, s):
    """Block principal pivoting from ``free`` (updated in place); x is written.
    Returns (iterations, converged, status)."""
    k = c.shape[0]
    y = np.empty(k)
    infeasible = np.zeros(k, dtype=np.bool_)
    for i in range(k):
        free[i] = free[i] and not fixed_zero[i]
    st = _solve_block(Q, c, free, ridge, x, M, L, r, s)
    if st != OK:
        return 0, False, st
    _residual_y(Q, c, x, free, y)
    n_best = k + 1
    budget = 3
    iterations = 0
    for it in range(max_iter + 1):
        xmax = 0.0
        for i in range(k):
            if abs(x[i]) > xmax:
                xmax = abs(x[i])
        lim = -tol * (1.0 + xmax)
        n_inf = 0
        last = -1
        for i in range(k):
            bad = ((free[i] and x[i] < lim) or (not free[i] and y[i] < lim)) and not fixed_zero[i]
            infeasible[i] = bad
            if bad:
                n_inf += 1
                last = i
        if n_inf == 0 or it == max_iter:
            break
        if n_inf < n_best:
            n_best = n_inf
            budget = 3
            for i in range(k):
                if infeasible[i]:
                    free[i] = not free[i]
        elif budget >= 1:
            budget -= 1
            for i in range(k):
                if infeasible[i]:
                    free[i] = not free[i]
        else:  # Murty's rule: exchange the last infeasible variable only
            free[last] = not free[last]
        iterations += 1
        st = _solve_block(Q, c, free, ridge, x, M, L, r, s)
        if st != OK:
            return iterations, False, st
        _residual_y(Q, c, x, free, y)
    converged = True
    for i in range(k):
        if infeasible[i]:
            converged = False
        if x[i] < 0.0:
            x[i] = 0.0
    return iterations, converged, OK


@njit(**_INTERNAL)
def _lawson_hanson(Q, c, fixed_zero, tol, ridge, max_iter, free, x, M, L, r, s):
    """Lawson–Hanson active set from x = 0 (``free`` and x written). Returns
    (iterations, converged, status)."""
    k = c.shape[0]
    z = np.empty(k)
    y = np.empty(k)
    blocked = np.zeros(k, dtype=np.bool_)
    for i in range(k):
        x[i] = 0.0
        free[i] = False
    inner = False
    j = -1
    for iterations in range(max_iter):
        if not inner:
            xmax = 0.0
            for i in range(k):
                if abs(x[i]) > xmax:
                    xmax = abs(x[i])
            lim = -tol * (1.0 + xmax)
            j = -1
            best = np.inf
            for i in range(k):
                t = c[i]
                for q in range(k):
                    t += Q[i, q] * x[q]
                y[i] = t
                if not free[i] and not fixed_zero[i] and not blocked[i] and t < lim and t < best:
                    best = t
                    j = i
            if j < 0:
                for i in range(k):
                    if x[i] < 0.0:
                        x[i] = 0.0
                return iterations, True, OK
            free[j] = True
        st = _solve_block(Q, c, free, ridge, z, M, L, r, s)
        if st != OK:
            return iterations, False, st
        any_bad = False
        alpha = np.inf
        for i in range(k):
            if free[i] and z[i] <= 0.0:
                any_bad = True
                d = x[i] - z[i]
                if d < TINY:
                    d = TINY
                t = x[i] / d
                if t < alpha:
                    alpha = t
        if not any_bad:
            for i in range(k):
                x[i] = z[i]
                blocked[i] = False
            inner = False
            continue
        alpha = min(max(alpha, 0.0), 1.0)
        if not inner and alpha == 0.0 and z[j] <= 0.0:  # j cannot enter: skip it until x moves
            free[j] = False
            blocked[j] = True
            continue
        for i in range(k):
            x[i] = x[i] + alpha * (z[i] - x[i])
            free[i] = free[i] and x[i] > 0.0
            if not free[i]:
                x[i] = 0.0
        inner = True
    for i in range(k):
        if x[i] < 0.0:
            x[i] = 0.0
    return max_iter, False, OK


@njit(**_INTERNAL)
def _bit_length(n):
    b = 0
    while n > 0:
        b += 1
        n >>= 1
    return b


@njit(**_INTERNAL)
def _pivot(Q, c, fixed_zero, tol, ridge, max_iter, x):
    """Block pivoting (budget 2·log2(k) + 12) then Lawson–Hanson; x written.
    Returns (iterations, converged, status)."""
    k = c.shape[0]
    M = np.empty((k, k))
    L = np.zeros((k, k))
    r = np.empty(k)
    s = np.empty(k)
    free = np.empty(k, dtype=np.bool_)
    for i in range(k):
        free[i] = c[i] < 0.0
    budget = min(max_iter, 2 * _bit_length(k) + 12)
    it, conv, st = _block_pivoting(Q, c, fixed_zero, tol, ridge, budget, free, x, M, L, r, s)
    if st != OK or conv or budget >= max_iter:
        return it, conv, st
    more, conv, st = _lawson_hanson(Q, c, fixed_zero, tol, ridge, max_iter - budget, free, x, M, L, r, s)
    return it + more, conv, st


@njit(**_INTERNAL)
def _rescale(Q, c, Qs, cs, d):
    """diag(Qs) = 1 and ‖cs‖∞ = 1 (as ``taskgrad.solvers.nnls._rescale`` with zero_tol = 0);
    writes Qs, cs, d and returns (gamma, zero) with x = d ⊙ x̄ · gamma."""
    k = c.shape[0]
    zero = np.zeros(k, dtype=np.bool_)
    for i in range(k):
        q = Q[i, i]
        zero[i] = q <= 0.0 or q < TINY
        d[i] = 0.0 if zero[i] else 1.0 / math.sqrt(max(q, TINY))
    for i in range(k):
        for j in range(k):
            Qs[i, j] = Q[i, j] * d[i] * d[j]
        if zero[i]:
            Qs[i, i] += 1.0
    gamma = 0.0
    for i in range(k):
        cs[i] = c[i] * d[i]
        if abs(cs[i]) > gamma:
            gamma = abs(cs[i])
    if not gamma > 0.0:
        gamma = 1.0
    for i in range(k):
        cs[i] = cs[i] / gamma
    return gamma, zero


@njit(**_ENTRY)
def nnls_rows(Q, C, max_iter):
    """X[b, m] ≥ 0 minimizing ½xᵀQ[b]x + C[b, m]ᵀx for each b and each row m: Q (B, k, k)
    symmetric PSD, C (B, m, k). Same rescaling, tolerances and pivoting as
    :func:`taskgrad.solvers.nnls` (zero_tol = 0). Returns (X, status (B, m))."""
    B, k = Q.shape[0], Q.shape[-1]
    m = C.shape[1]
    X = np.zeros((B, m, k))
    status = np.zeros((B, m), dtype=np.int64)
    Qs = np.empty((k, k))
    cs = np.empty(k)
    d = np.empty(k)
    xs = np.empty(k)
    for b in range(B):
        for row in range(m):
            gamma, zero = _rescale(Q[b], C[b, row], Qs, cs, d)
            _, conv, st = _pivot(Qs, cs, zero, NNLS_TOL, NNLS_RIDGE, max_iter, xs)
            status[b, row] = st
            for i in range(k):
                X[b, row, i] = xs[i] * d[i] * gamma
    return X, status


@njit(**_INTERNAL)
def _min_norm_one(G, max_iter, w):
    """MGDA's α in the simplex minimizing αᵀGα (port of ``solvers.primary_aux._mixed`` with
    n = k): z ≥ 0 minimizing ½zᵀ(C + b̃b̃ᵀ)z − b̃ᵀz with C the Gram of the normalized gradients
    (unit diagonal) and b̃ᵢ = σ_min/σᵢ ≤ 1, then αᵢ ∝ zᵢ·σ_min/σᵢ. Every entry keeps the
    rounding of C whatever the spread of the norms σᵢ = ‖gᵢ‖. Gradients with ‖gᵢ‖² below the
    smallest normal number make d = 0 optimal: α is uniform over them. Writes w; returns a status."""
    k = G.shape[0]
    if k == 1:
        w[0] = 1.0
        return OK
    n_zero = 0
    for i in range(k):
        if not G[i, i] >= TINY:  # zero, subnormal (or NaN) squared norm
            n_zero += 1
    if n_zero > 0:  # d = 0 is attained: uniform weights on the zero gradients
        for i in range(k):
            w[i] = 1.0 / n_zero if not G[i, i] >= TINY else 0.0
        return OK
    inv = np.empty(k)
    sig_min = np.inf
    for i in range(k):
        sg = math.sqrt(G[i, i])
        inv[i] = 1.0 / sg
        if sg < sig_min:
            sig_min = sg
    bt = np.empty(k)
    for i in range(k):
        bt[i] = sig_min * inv[i]
    Q = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            Q[i, j] = G[i, j] * inv[i] * inv[j] + bt[i] * bt[j]
    c = np.empty(k)
    for i in range(k):
        c[i] = -bt[i]
    Qs = np.empty((k, k))
    cs = np.empty(k)
    d = np.empty(k)
    gamma, zero = _rescale(Q, c, Qs, cs, d)
    xs = np.empty(k)
    _, conv, st = _pivot(Qs, cs, zero, NNLS_TOL, NNLS_RIDGE, max_iter, xs)
    tot = 0.0
    for i in range(k):
        w[i] = xs[i] * d[i] * gamma * bt[i]
        tot += w[i]
    tot = max(tot, TINY)
    for i in range(k):
        w[i] = w[i] / tot
    return st


@njit(**_ENTRY)
def min_norm(G, max_iter):
    """Batched min-norm point of the convex hull: W (B, k) and status (B,) for G (B, k, k)."""
    B, k = G.shape[0], G.shape[-1]
    W = np.empty((B, k))
    status = np.zeros(B, dtype=np.int64)
    for b in range(B):
        status[b] = _min_norm_one(G[b], max_iter, W[b])
    return W, status
