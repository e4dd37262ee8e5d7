"""CPU solver: block coordinate descent on working sets, gap-safe screening, duality-gap stopping.

Outer loop: compute the duality gap G of the full problem from a feasible dual point θ; discard
every feature with Ω*_j(x_jᵀθ) + r·‖x_j‖ < a1, r = √(2G·c·s_max/n̄) (the gap-safe sphere, since
the dual is (n̄/(c·s_max))-strongly concave); rank the others by (a1 − Ω*_j(x_jᵀθ))/‖x_j‖ and solve
the problem restricted to the support plus the best-ranked features (a working set) by BCD until
its own gap is below 0.3·G. Stop when G ≤ tol·f(0) (f(0): the datafit with W = 0 and the best
intercept).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._problem import Problem


@dataclass
class SolverResult:
    W: np.ndarray
    b: np.ndarray
    gap: float
    n_iter: int
    converged: bool
    tol_abs: float
    n_screened: int


def penalty_value(W: np.ndarray, pen: int, a1: float, a2: float) -> float:
    """a1·Ω(W) + (a2/2)‖W‖_F²."""
    val = 0.5 * a2 * float((W**2).sum()) if a2 else 0.0
    if pen == 0:
        val += a1 * float(np.sqrt((W**2).sum(axis=1)).sum())
    elif pen == 1:
        val += a1 * float(np.abs(W).sum())
    return val


def dual_norms(V: np.ndarray, pen: int) -> np.ndarray:
    """Per-feature dual norm of the rows of V: ‖V_j‖₂ (l21, l2) or ‖V_j‖_∞ (l1)."""
    if pen == 1:
        return np.abs(V).max(axis=1) if V.shape[1] else np.zeros(V.shape[0])
    return np.sqrt((V**2).sum(axis=1))


def penalty_conjugate(V: np.ndarray, pen: int, a1: float, a2: float) -> float:
    """h*(V) for h = a1Ω + (a2/2)‖·‖² with a2 > 0: Σ (dual-norm part − a1)₊² / (2a2)."""
    if pen == 0:
        return float((np.maximum(np.sqrt((V**2).sum(axis=1)) - a1, 0.0) ** 2).sum() / (2 * a2))
    if pen == 1:
        return float((np.maximum(np.abs(V) - a1, 0.0) ** 2).sum() / (2 * a2))
    return float((V**2).sum() / (2 * a2))


def duality_gap(P: Problem, W, b, Z, a1, a2, pen, Xsub=None):
    """Return (gap, θ, Xᵀθ, primal); refits the intercept first (in place)."""
    P.refit_intercept(b, Z)
    theta = P.feasible_theta(Z)
    V = P.xt(theta, Xsub)
    if a2 == 0.0:
        dn = float(dual_norms(V, pen).max()) if V.size else 0.0
        if dn > a1:
            theta *= a1 / dn
            V *= a1 / dn
        conj = 0.0
    else:
        conj = penalty_conjugate(V, pen, a1, a2)
    primal = P.value(Z) + penalty_value(W, pen, a1, a2)
    dual = P.dual_value(theta) - conj
    return primal - dual, theta, V, primal


def datafit_at_zero(P: Problem) -> float:
    """f(0) with the best intercept: the scale of the stopping rule."""
    W0 = np.zeros((P.n_features, P.n_tasks))
    b0 = _init_intercept(P)
    Z0 = P.predict(W0, b0)
    P.refit_intercept(b0, Z0)
    return P.value(Z0)


def _init_intercept(P: Problem) -> np.ndarray:
    return np.zeros(P.n_tasks)


def alpha_max_of(P: Problem, pen: int) -> float:
    """Smallest a1 for which W = 0 is optimal: max_j Ω*_j(x_jᵀθ₀), θ₀ = −∇f(best intercept)."""
    W0 = np.zeros((P.n_features, P.n_tasks))
    b0 = _init_intercept(P)
    Z0 = P.predict(W0, b0)
    P.refit_intercept(b0, Z0)
    V = P.xt(P.feasible_theta(Z0))
    return float(dual_norms(V, pen).max()) if V.size else 0.0


def solve_cd(
    P: Problem,
    a1: float,
    a2: float,
    pen: int,
    *,
    W0: np.ndarray | None = None,
    b0: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    screening: bool = True,
    working_set: bool = True,
    p0: int = 10,
    check_every: int = 10,
    tol_abs: float | None = None,
) -> SolverResult:
    """Minimize the problem of ``P`` (module docstring); ``max_iter`` bounds the BCD epochs."""
    p, T = P.n_features, P.n_tasks
    W = np.zeros((p, T)) if W0 is None else np.array(W0, dtype=np.float64, order="C")
    b = np.zeros(T) if (b0 is None or not P.intercept_coord) else np.array(b0, dtype=np.float64)
    Z = P.predict(W, b)
    if tol_abs is None:
        tol_abs = tol * datafit_at_zero(P)
    alive = P.colnorm > 0
    if (~alive).any():
        W[~alive] = 0.0
    if pen == 2 or a1 == 0.0:
        screening = False
        working_set = False
    n_epochs = 0
    ws_size = 0
    prev_gap = np.inf
    converged = False
    while True:
        gap, theta, V, _ = duality_gap(P, W, b, Z, a1, a2, pen)
        if gap <= tol_abs:
            converged = True
            break
        if n_epochs >= max_iter:
            break
        dn = dual_norms(V, pen)
        if screening:
            r = np.sqrt(2.0 * max(gap, 0.0) * P.curv * P.inv_n * P.s_max)
            kill = alive & (dn + r * P.colnorm < a1)
            for j in np.flatnonzero(kill & (W != 0).any(axis=1)):
                P.sub_column(Z, j, W[j])
                W[j] = 0.0
            alive &= ~kill
        idx_alive = np.flatnonzero(alive)
        if working_set:
            supp = (W != 0).any(axis=1)
            new_size = max(p0, 2 * int(supp.sum()))
            if gap > 0.5 * prev_gap:  # too little progress: grow the working set
                new_size = max(new_size, 2 * ws_size)
            ws_size = min(new_size, idx_alive.size)
            with np.errstate(divide="ignore"):
                score = (a1 - dn[idx_alive]) / P.colnorm[idx_alive]
            score[supp[idx_alive]] = -np.inf
            if ws_size < idx_alive.size:
                ws = np.sort(idx_alive[np.argpartition(score, ws_size - 1)[:ws_size]])
            else:
                ws = idx_alive
        else:
            ws = idx_alive
        ws = np.ascontiguousarray(ws, dtype=np.int64)
        prev_gap = gap
        inner_tol = max(0.3 * gap, 0.5 * tol_abs)
        full = ws.size == p
        Xsub = None if full else P.columns(ws)
        k = 0
        while n_epochs < max_iter:
            P.epoch(ws, W, Z, a1, a2, pen)
            P.intercept_step(b, Z)
            n_epochs += 1
            k += 1
            if k % check_every == 0:
                if full:
                    break  # the outer gap is the gap of this subproblem
                g_in = duality_gap(P, W, b, Z, a1, a2, pen, Xsub)[0]
                if g_in <= inner_tol:
                    break
    if not converged:
        warnings.warn(
            f"The solver did not reach the duality gap tolerance {tol_abs:.3g} in {max_iter} "
            f"epochs (gap {gap:.3g}). Increase max_iter, loosen tol, or scale the features.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return SolverResult(W=W, b=b, gap=float(gap), n_iter=n_epochs, converged=converged,
                        tol_abs=float(tol_abs), n_screened=int(p - alive.sum()))
