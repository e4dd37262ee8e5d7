"""The pivoting solvers of :mod:`taskgrad.solvers.nnls` for one problem on the CPU, in NumPy.

Same algorithm and tolerances as the batched torch version (block principal pivoting with
Murty's fallback, then Lawson–Hanson for what it does not finish), on the gathered free block
only. For a single small problem the cost is the number of array operations, each about ten
times cheaper in NumPy than a torch operator call; the batched tests compare the two paths.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import get_lapack_funcs


def _solve_block(Q: np.ndarray, c: np.ndarray, free: np.ndarray, ridge: float) -> np.ndarray:
    """X with x_F = −(Q_FF + ridge·I)⁻¹ c_F (one step of iterative refinement), x_A = 0."""
    x = np.zeros_like(c)
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return x
    M = Q[idx][:, idx]
    diag = np.diag_indices(idx.size)
    M[diag] += ridge
    rhs = -c[idx]
    potrf, potrs = get_lapack_funcs(("potrf", "potrs"), (M,))  # LAPACK directly: no wrapper cost
    L, info = potrf(M, lower=True)
    bump = ridge
    while info != 0:  # rounding made the block indefinite: a larger ridge, as the torch path does
        bump *= 100.0
        if bump > 1e-2:
            raise np.linalg.LinAlgError(
                f"the free block is not positive definite (LAPACK potrf info={info})"
            )
        M[diag] += bump
        L, info = potrf(M, lower=True)
    xf = potrs(L, rhs, lower=True)[0]
    xf = xf + potrs(L, rhs - M @ xf, lower=True)[0]
    x[idx] = xf
    return x


def block_pivoting(
    Q: np.ndarray,
    c: np.ndarray,
    fixed_zero: np.ndarray,
    tol: float,
    ridge: float,
    max_iter: int,
    free: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Block principal pivoting from the free set ``free``; returns (x, free, iters, converged)."""
    free = free & ~fixed_zero
    x = _solve_block(Q, c, free, ridge)
    y = np.where(free, 0.0, Q @ x + c)
    n_best, budget, iterations = c.size + 1, 3, 0
    infeasible = np.zeros_like(free)
    for it in range(max_iter + 1):
        lim = -tol * (1.0 + np.abs(x).max(initial=0.0))
        infeasible = ((free & (x < lim)) | (~free & (y < lim))) & ~fixed_zero
        n_inf = int(infeasible.sum())
        if n_inf == 0 or it == max_iter:
            break
        if n_inf < n_best:
            n_best, budget = n_inf, 3
            flip = infeasible
        elif budget >= 1:
            budget -= 1
            flip = infeasible
        else:  # Murty's rule: exchange the last infeasible variable only
            flip = np.zeros_like(infeasible)
            flip[np.flatnonzero(infeasible)[-1]] = True
        free = free ^ flip
        iterations += 1
        x = _solve_block(Q, c, free, ridge)
        y = np.where(free, 0.0, Q @ x + c)
    return np.maximum(x, 0.0), free, iterations, not infeasible.any()


def lawson_hanson(
    Q: np.ndarray, c: np.ndarray, fixed_zero: np.ndarray, tol: float, ridge: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Lawson–Hanson active set from x = 0; returns (x, free, iterations, converged)."""
    x = np.zeros_like(c)
    free = np.zeros(c.size, dtype=bool)
    blocked = np.zeros_like(free)
    inner = False
    for iterations in range(max_iter):
        if not inner:
            y = Q @ x + c
            cand = ~free & ~fixed_zero & ~blocked & (y < -tol * (1.0 + np.abs(x).max(initial=0.0)))
            if not cand.any():
                return np.maximum(x, 0.0), free, iterations, True
            j = int(np.argmin(np.where(cand, y, np.inf)))
            free[j] = True
        z = _solve_block(Q, c, free, ridge)
        bad = free & (z <= 0)
        if not bad.any():
            x, inner, blocked[:] = z, False, False
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = float(
                np.clip(
                    np.min(np.where(bad, x / np.maximum(x - z, np.finfo(x.dtype).tiny), np.inf)),
                    0.0,
                    1.0,
                )
            )
        if not inner and alpha == 0.0 and bad[j]:  # j cannot enter: skip it until the point moves
            free[j], blocked[j] = False, True
            continue
        x = x + alpha * (z - x)
        free &= x > 0
        x = np.where(free, x, 0.0)
        inner = True
    return np.maximum(x, 0.0), free, max_iter, False


def pivot(
    Q: np.ndarray,
    c: np.ndarray,
    fixed_zero: np.ndarray,
    tol: float,
    ridge: float,
    max_iter: int,
    free: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Block pivoting with a budget of 2·log2(k) + 12 iterations, then Lawson–Hanson."""
    k = c.size
    budget = min(max_iter, 2 * int(k).bit_length() + 12)
    start = c < 0 if free is None else free
    x, free_out, iters, conv = block_pivoting(Q, c, fixed_zero, tol, ridge, budget, start)
    if conv or budget >= max_iter:
        return x, free_out, iters, conv
    x, free_out, more, conv = lawson_hanson(Q, c, fixed_zero, tol, ridge, max_iter - budget)
    return x, free_out, iters + more, conv
