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
from typing import Any

import numpy as np
import numpy.typing as npt

from .._numba import HAVE_NUMBA, njit  # noqa: F401  (HAVE_NUMBA re-exported; without numba the kernels run as Python)

# the kernels' arrays (float64 matrices and vectors, bool masks, int32 indices)
Array = npt.NDArray[Any]

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
def _cholesky(M: Array, n: int, L: Array) -> int:
    """Lower Cholesky factor of M[:n, :n] into L[:n, :n]; returns 0, or j + 1 at the first
    non-positive pivot (LAPACK's potrf convention).
    """
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
def _cho_solve(L: Array, n: int, b: Array, out: Array) -> None:
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
def _solve_block(
    Q: Array, c: Array, free: Array, ridge: float, x: Array, M: Array, L: Array, r: Array, s: Array
) -> int:
    """X with x_F = −(Q_FF + ridge·I)⁻¹ c_F (one step of iterative refinement), x_A = 0.
    Returns a status (NOT_PD when even a ridge of 1e-2 leaves the block indefinite).
    """
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
def _residual_y(Q: Array, c: Array, x: Array, free: Array, y: Array) -> None:
    """Y = Qx + c off the free set, 0 on it."""
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
def _block_pivoting(
    Q: Array,
    c: Array,
    fixed_zero: Array,
    tol: float,
    ridge: float,
    max_iter: int,
    free: Array,
    x: Array,
    M: Array,
    L: Array,
    r: Array,
    s: Array,
) -> tuple[int, bool, int]:
    """Block principal pivoting from ``free`` (updated in place); x is written.
    Returns (iterations, converged, status).
    """
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
def _lawson_hanson(
    Q: Array,
    c: Array,
    fixed_zero: Array,
    tol: float,
    ridge: float,
    max_iter: int,
    free: Array,
    x: Array,
    M: Array,
    L: Array,
    r: Array,
    s: Array,
) -> tuple[int, bool, int]:
    """Lawson–Hanson active set from x = 0 (``free`` and x written). Returns
    (iterations, converged, status).
    """
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
def _bit_length(n: int) -> int:
    b = 0
    while n > 0:
        b += 1
        n >>= 1
    return b


@njit(**_INTERNAL)
def _pivot(
    Q: Array, c: Array, fixed_zero: Array, tol: float, ridge: float, max_iter: int, x: Array
) -> tuple[int, bool, int]:
    """Block pivoting (budget 2·log2(k) + 12) then Lawson–Hanson; x written.
    Returns (iterations, converged, status).
    """
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
    more, conv, st = _lawson_hanson(
        Q, c, fixed_zero, tol, ridge, max_iter - budget, free, x, M, L, r, s
    )
    return it + more, conv, st


@njit(**_INTERNAL)
def _rescale(Q: Array, c: Array, Qs: Array, cs: Array, d: Array) -> tuple[float, Array]:
    """diag(Qs) = 1 and ‖cs‖∞ = 1 (as ``taskgrad.solvers.nnls._rescale`` with zero_tol = 0);
    writes Qs, cs, d and returns (gamma, zero) with x = d ⊙ x̄ · gamma.
    """
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
def nnls_rows(Q: Array, C: Array, max_iter: int) -> tuple[Array, Array]:
    """X[b, m] ≥ 0 minimizing ½xᵀQ[b]x + C[b, m]ᵀx for each b and each row m: Q (B, k, k)
    symmetric PSD, C (B, m, k). Same rescaling, tolerances and pivoting as
    :func:`taskgrad.solvers.nnls` (zero_tol = 0). Returns (X, status (B, m)).
    """
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
def _min_norm_ldp(G: Array, max_iter: int, w: Array) -> int:
    """MGDA's α in the simplex minimizing αᵀGα by pivoting (port of the first pass of
    ``solvers.primary_aux._mixed`` with n = k): z ≥ 0 minimizing ½zᵀ(C + b̃b̃ᵀ)z − b̃ᵀz with
    C the Gram of the normalized gradients (unit diagonal) and b̃ᵢ = σ_min/σᵢ ≤ 1, then
    αᵢ ∝ zᵢ·σ_min/σᵢ. Every entry keeps the rounding of C whatever the spread of the norms
    σᵢ = ‖gᵢ‖. Gradients with ‖gᵢ‖² below the smallest normal number make d = 0 optimal: α is
    uniform over them. Writes w; returns a status.
    """
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
    st: int
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
def min_norm(G: Array, max_iter: int) -> tuple[Array, Array]:
    """Batched min-norm point of the convex hull: W (B, k) and status (B,) for G (B, k, k)."""
    B, k = G.shape[0], G.shape[-1]
    W = np.empty((B, k))
    status = np.zeros(B, dtype=np.int64)
    for b in range(B):
        status[b] = _min_norm_one(G[b], max_iter, W[b])
    return W, status


# --------------------------------------------------------------------------------------------
# Exact min-norm / mixed problem in normalized variables (the fallback of the pivoting solvers)

# eigenvalues of the unit-diagonal free block below this (times its size) are rounding: the
# block is singular there
NULL_TOL = 64.0 * EPS
# a null direction carries β when its component is at least this fraction of ‖β_F‖
NULL_BETA = 1e-10


@njit(**_INTERNAL)
def _eqp(C: Array, beta: Array, free: Array, p: Array) -> float:
    """z_F minimizing zᵀCz subject to βᵀz = 1 on the free set (0 elsewhere), written to p;
    returns μ = min zᵀCz (0 when a null direction of C_FF carries β).

    C_FF has a unit diagonal. Cholesky when every pivot exceeds m·NULL_TOL, giving
    z = C⁻¹β/(βᵀC⁻¹β); otherwise the eigen-decomposition: if the null space of C_FF carries
    a fraction ≥ NULL_BETA of β, z is the projection of β on it normalized to βᵀz = 1 and
    μ = 0 (the free gradients cancel exactly), else the pseudo-inverse on the range.
    """
    k = C.shape[0]
    idx = np.empty(k, dtype=np.int64)
    m = 0
    for i in range(k):
        p[i] = 0.0
        if free[i]:
            idx[m] = i
            m += 1
    M = np.empty((m, m))
    b = np.empty(m)
    for a in range(m):
        b[a] = beta[idx[a]]
        for c in range(m):
            M[a, c] = C[idx[a], idx[c]]
    tau = m * NULL_TOL
    # Cholesky with a pivot floor
    L = np.zeros((m, m))
    ok = True
    for j in range(m):
        s = M[j, j]
        for q in range(j):
            s -= L[j, q] * L[j, q]
        if not s > tau:
            ok = False
            break
        dj = math.sqrt(s)
        L[j, j] = dj
        for i in range(j + 1, m):
            t = M[i, j]
            for q in range(j):
                t -= L[i, q] * L[j, q]
            L[i, j] = t / dj
    h = np.empty(m)
    if ok:
        _cho_solve(L, m, b, h)
        bh = 0.0
        for a in range(m):
            bh += b[a] * h[a]
        if bh > 0.0:
            for a in range(m):
                p[idx[a]] = h[a] / bh
            return 1.0 / bh
    lam, U = np.linalg.eigh(M)
    lmax = max(lam[m - 1], 1.0)
    bn = 0.0
    bb = 0.0
    for a in range(m):
        bb += b[a] * b[a]
    nullc = np.zeros(m)
    for e in range(m):
        if lam[e] <= tau * lmax:
            t = 0.0
            for a in range(m):
                t += U[a, e] * b[a]
            nullc[e] = t
            bn += t * t
    if bn > (NULL_BETA * NULL_BETA) * bb and bn > 0.0:
        for a in range(m):
            t = 0.0
            for e in range(m):
                t += U[a, e] * nullc[e]
            p[idx[a]] = t / bn  # βᵀz = Σ nullc² / bn = 1
        return 0.0
    bh = 0.0
    for a in range(m):
        h[a] = 0.0
    for e in range(m):
        if lam[e] > tau * lmax:
            t = 0.0
            for a in range(m):
                t += U[a, e] * b[a]
            bh += t * t / lam[e]
            for a in range(m):
                h[a] += U[a, e] * t / lam[e]
    if not bh > 0.0:
        return -1.0
    for a in range(m):
        p[idx[a]] = h[a] / bh
    return 1.0 / bh


@njit(**_INTERNAL)
def _simplex_qp(
    C: Array, beta: Array, live: Array, free: Array, tol: float, max_iter: int, z: Array
) -> tuple[int, bool]:
    """Primal active set for z ≥ 0 minimizing ½zᵀCz subject to βᵀz = 1 (z held at 0 off
    ``live``), from the free set ``free`` (updated in place); z is written.

    Each iteration solves the equality-constrained problem on the free set exactly (:func:`_eqp`);
    a negative component steps back to the boundary and drops the blocking variable, otherwise the
    live variable with the most negative multiplier ηⱼ = (Cz)ⱼ − μβⱼ below −tol·Σz enters.
    Returns (iterations, converged).
    """
    k = C.shape[0]
    p = np.empty(k)
    blocked = np.zeros(k, dtype=np.bool_)
    any_free = False
    for i in range(k):
        free[i] = free[i] and live[i]
        any_free = any_free or (free[i] and beta[i] > 0.0)
    if not any_free:  # start from the vertex of smallest objective ½/βⱼ² (the smallest gradient)
        j = -1
        for i in range(k):
            free[i] = False
            if live[i] and beta[i] > 0.0 and (j < 0 or beta[i] > beta[j]):
                j = i
        if j < 0:
            return 0, False
        free[j] = True
    mu = _eqp(C, beta, free, z)
    for i in range(k):
        if z[i] < 0.0:  # a warm start that is not feasible: restart from its best vertex
            j = -1
            for q in range(k):
                if free[q] and beta[q] > 0.0 and (j < 0 or beta[q] > beta[j]):
                    j = q
            for q in range(k):
                free[q] = q == j
            mu = _eqp(C, beta, free, z)
            break
    for it in range(max_iter):
        if mu < 0.0:
            return it, False
        S = 0.0
        for i in range(k):
            S += z[i]
        j = -1
        best = -tol * S
        for i in range(k):
            if live[i] and not free[i] and not blocked[i]:
                eta = -mu * beta[i]
                for q in range(k):
                    eta += C[i, q] * z[q]
                if eta < best:
                    best = eta
                    j = i
        if j < 0:
            return it, True
        free[j] = True
        while True:
            mu = _eqp(C, beta, free, p)
            t = 1.0
            out = -1
            for i in range(k):
                if free[i] and p[i] <= 0.0:
                    d = z[i] - p[i]
                    r = z[i] / d if d > 0.0 else 0.0
                    if r < t or out < 0:
                        t = r
                        out = i
            if out < 0:
                for i in range(k):
                    z[i] = p[i]
                    blocked[i] = False
                break
            if out == j and t <= 0.0:  # j cannot enter here: skip it until z moves
                free[j] = False
                blocked[j] = True
                mu = _eqp(C, beta, free, p)
                break
            for i in range(k):
                z[i] = z[i] + t * (p[i] - z[i])
            free[out] = False
            z[out] = 0.0
            for i in range(k):
                if free[i] and z[i] <= 0.0:
                    free[i] = False
                    z[i] = 0.0
    return max_iter, False


@njit(**_INTERNAL)
def _mixed_exact_one(
    G: Array, n: int, dead: Array, free0: Array, max_iter: int, w: Array
) -> tuple[int, bool]:
    """One problem of :func:`mixed_exact`: writes w (k,); returns (iterations, converged)."""
    k = G.shape[0]
    n_zero = 0
    for i in range(n):
        if not G[i, i] >= TINY:
            n_zero += 1
    if n_zero > 0:
        for i in range(k):
            w[i] = 1.0 / n_zero if (i < n and not G[i, i] >= TINY) else 0.0
        return 0, True
    C = np.empty((k, k))
    beta = np.empty(k)
    inv = np.empty(k)
    live = np.empty(k, dtype=np.bool_)
    free = np.empty(k, dtype=np.bool_)
    z = np.empty(k)
    for i in range(k):
        live[i] = (not dead[i]) and G[i, i] >= TINY
        inv[i] = 1.0 / math.sqrt(G[i, i]) if live[i] else 0.0
        beta[i] = inv[i] if i < n else 0.0
        free[i] = free0[i]
    bmax = 0.0
    for i in range(n):
        bmax = max(bmax, beta[i])
    for i in range(k):
        beta[i] = beta[i] / bmax  # ≤ 1: σ_min/σᵢ on primaries
        for j in range(k):
            C[i, j] = G[i, j] * inv[i] * inv[j] if (live[i] and live[j]) else 0.0
        if live[i]:
            C[i, i] = 1.0
    it, ok = _simplex_qp(C, beta, live, free, NNLS_TOL, max_iter, z)
    tot = 0.0
    for i in range(k):
        w[i] = z[i] * inv[i] if z[i] > 0.0 else 0.0
        if i < n:
            tot += w[i]
    tot = max(tot, TINY)
    for i in range(k):
        w[i] = w[i] / tot
    return it, ok


@njit(**_ENTRY)
def mixed_exact(
    G: Array, n: int, dead: Array, free0: Array, max_iter: int
) -> tuple[Array, Array, Array]:
    """w[:n] in the simplex and w[n:] ≥ 0 minimizing wᵀGw for each (k, k) Gram of G (B, k, k),
    exactly in the normalized variables zᵢ = wᵢσᵢ (σᵢ = ‖gᵢ‖): z ≥ 0 minimizing ½zᵀCz with
    Σ_{j<n} zⱼ/σⱼ = 1 and C the Gram of the normalized gradients. ``dead`` (B, k) holds tasks
    at 0; ``free0`` (B, k) is the starting free set (e.g. the support of an approximate answer).
    Zero primary gradients (‖g‖² below the smallest normal) make d = 0 optimal: uniform weights
    on them. Returns (W (B, k), iterations (B,), converged (B,)).
    """
    B, k = G.shape[0], G.shape[-1]
    W = np.zeros((B, k))
    iters = np.zeros(B, dtype=np.int64)
    conv = np.zeros(B, dtype=np.bool_)
    for b in range(B):
        it, ok = _mixed_exact_one(G[b], n, dead[b], free0[b], max_iter, W[b])
        iters[b] = it
        conv[b] = ok
    return W, iters, conv


@njit(**_INTERNAL)
def _mixed_residual(G: Array, w: Array, n: int) -> float:
    """The scale-aware KKT residual of :func:`taskgrad.solvers.primary_aux_kkt_residual` (eps = 0)
    for weights w of one (k, k) Gram (V = Σⱼ wⱼσⱼ: auxiliary constraints in units of σᵢV,
    primary ones in units of (σᵢ + V)·V).
    """
    k = G.shape[0]
    tot = 0.0
    for i in range(n):
        tot += w[i]
    tot = max(tot, TINY)
    V = 0.0
    for i in range(k):
        if G[i, i] >= TINY:  # a smaller squared norm is a zero gradient, dropped
            V += abs(w[i]) / tot * math.sqrt(G[i, i])
    if not V > 0.0:
        V = 1.0
    Gu = np.zeros(k)
    uu = 0.0
    for i in range(k):
        if not G[i, i] >= TINY:
            continue
        t = 0.0
        for j in range(k):
            if G[j, j] >= TINY:
                t += G[i, j] * w[j] / tot
        Gu[i] = t
        uu += w[i] / tot * t
    res = 0.0
    for i in range(k):
        if not G[i, i] >= TINY:
            continue
        s = math.sqrt(G[i, i])
        slack = (Gu[i] - uu) / ((s + V) * V) if i < n else Gu[i] / (s * V)
        r = abs(min(w[i] / tot * s / V, slack))
        if r > res:
            res = r
    return res


@njit(**_INTERNAL)
def _min_norm_one(G: Array, max_iter: int, w: Array) -> int:
    """MGDA's α in the simplex minimizing αᵀGα for one Gram (writes w; returns a status): the
    block pivoting of :func:`_min_norm_ldp` finds the support in a few exchanges, then the exact
    active set of :func:`_mixed_exact_one` started from that support polishes it (singular
    supports, whose large gradients cancel beside smaller ones, are beyond the pivoting's ridge).
    The answer with the smaller KKT residual on G is kept.
    """
    st: int = _min_norm_ldp(G, max_iter, w)
    k = G.shape[0]
    if st != OK or k == 1:
        return st
    dead = np.zeros(k, dtype=np.bool_)
    free0 = np.empty(k, dtype=np.bool_)
    for i in range(k):
        free0[i] = w[i] > 0.0
    wx = np.empty(k)
    _mixed_exact_one(G, k, dead, free0, max_iter, wx)
    if _mixed_residual(G, wx, k) <= _mixed_residual(G, w, k):
        for i in range(k):
            w[i] = wx[i]
    return OK


@njit(**_ENTRY)
def pivot_batch(
    Qs: Array,
    cs: Array,
    fixed_zero: Array,
    tol: float,
    ridge: float,
    max_iter: int,
    free0: Array,
    use_free0: bool,
) -> tuple[Array, Array, Array, Array, Array]:
    """The pivoting of :func:`taskgrad.solvers.nnls._pivot` on each rescaled problem of a batch,
    one after the other: Qs (B, k, k), cs and fixed_zero (B, k); the start is ``free0`` (B, k)
    when ``use_free0``, else cs < 0. Block pivoting with a budget of 2·log2(k) + 12 iterations,
    then Lawson–Hanson. Returns (X (B, k), free (B, k), iterations (B,), converged (B,),
    status (B,)). Each problem costs its own free blocks only, never the full k³ of a masked
    batched factorization.
    """
    B, k = cs.shape[0], cs.shape[1]
    X = np.zeros((B, k))
    F = np.zeros((B, k), dtype=np.bool_)
    iters = np.zeros(B, dtype=np.int64)
    conv = np.zeros(B, dtype=np.bool_)
    status = np.zeros(B, dtype=np.int64)
    M = np.empty((k, k))
    L = np.zeros((k, k))
    r = np.empty(k)
    s = np.empty(k)
    free = np.empty(k, dtype=np.bool_)
    budget = min(max_iter, 2 * _bit_length(k) + 12)
    for b in range(B):
        Q = Qs[b]
        c = cs[b]
        x = X[b]
        for i in range(k):
            free[i] = free0[b, i] if use_free0 else c[i] < 0.0
        it, ok, st = _block_pivoting(Q, c, fixed_zero[b], tol, ridge, budget, free, x, M, L, r, s)
        if st == OK and not ok and budget < max_iter:
            more, ok, st = _lawson_hanson(
                Q, c, fixed_zero[b], tol, ridge, max_iter - budget, free, x, M, L, r, s
            )
            it += more
        iters[b] = it
        conv[b] = ok
        status[b] = st
        for i in range(k):
            F[b, i] = free[i]
    return X, F, iters, conv, status
