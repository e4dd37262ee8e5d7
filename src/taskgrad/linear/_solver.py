"""CPU solver: block coordinate descent on working sets, gap-safe screening, duality-gap stopping.

Outer loop: compute the duality gap G of the full problem from a feasible dual point θ; discard
every feature with Ω*_j(x_jᵀθ) + r·‖x_j‖ < a1, r = √(2G·c·s_max/n̄) (the gap-safe sphere, since
the dual is (n̄/(c·s_max))-strongly concave); rank the others by (a1 − Ω*_j(x_jᵀθ))/‖x_j‖ and solve
the problem restricted to the support plus the best-ranked features (a working set) by BCD until
its own gap is below 0.3·G. Stop when G ≤ tol·f(0) (f(0): the datafit with W = 0 and the best
intercept). Inner solver on the working set: BCD (through the Gram matrix for the quadratic loss
on a small working set), or proximal Newton steps with a line search for the binary logistic loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from . import _kernels as K
from ._inputs import Matrix
from ._problem import Problem
from ._warn import warn_at_user


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


def duality_gap(
    P: Problem,
    W: np.ndarray,
    b: np.ndarray,
    Z: np.ndarray,
    a1: float,
    a2: float,
    pen: int,
    Xsub: Matrix | None = None,
) -> tuple[float, np.ndarray, np.ndarray, float]:
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


def zero_is_not_optimal(P: Problem, a1: float, pen: int) -> bool:
    """True when α < α_max: W = 0 violates max_j Ω*_j(x_jᵀθ₀) ≤ a1, so it is not optimal.

    At W = 0 and α = (1 − √tol)·α_max the duality gap equals tol·f(0) exactly (the scaled dual
    point gives gap = (1 − α/α_max)²·f(0) for the quadratic loss), so the stopping test alone would
    let rounding decide whether the all-zero solution is returned; the solvers instead make at
    least one pass whenever W = 0 is known not to be optimal.
    """
    return alpha_max_of(P, pen) > a1


_EMPTY_F = np.zeros(0)
_EMPTY_I = np.zeros(0, dtype=np.int32)
_DUMMY_X = np.zeros((1, 1), order="F")


class _WorkingSet:
    """The features ``ws`` of one inner solve. Dense designs: a compact centered column-major copy
    X_ws and the rows W_ws (written back by :meth:`sync`); for the quadratic loss on a shared
    design without an intercept coordinate and |ws| ≤ n/2, CD runs on the Gram matrix
    G = X_wsᵀ diag(s/n̄) X_ws with the gradient Q = X_wsᵀ∇f(Z) updated in place (Z is brought up to
    date by :meth:`sync`). Sparse designs: the kernel indexes the CSC columns directly.
    """

    GRAM_MAX = 1000  # G is |ws|² doubles

    def __init__(self, P: Problem, ws: np.ndarray, W: np.ndarray, Z: np.ndarray) -> None:
        self.P, self.ws, self.W, self.Z = P, ws, W, Z
        self.dense = not P.sparse
        # the design restricted to ws (None: a sparse design indexed in place)
        self.Xsub: Matrix = P.columns(ws) if (self.dense or ws.size < P.n_features) else None
        self.gram = False
        if self.dense:
            self.Wws = np.ascontiguousarray(W[ws])
            self.Lws = np.ascontiguousarray(P.Lmat[ws])
            n = Z.shape[0]
            self.gram = (
                P.loss == 0
                and P.layout == "shared"
                and not P.intercept_coord
                and 2 * ws.size <= n
                and ws.size <= self.GRAM_MAX
            )
            if self.gram:
                Xs = cast(Matrix, self.Xsub)  # dense: the compact block
                self.G = P.inv_n * (Xs.T @ (Xs * P.S[:, None]))
                self.Q = np.ascontiguousarray(Xs.T @ P.dloss(Z))
                self.W_synced = self.Wws.copy()

    @property
    def newton(self) -> bool:
        """Binary logistic loss: proximal Newton steps instead of plain BCD epochs."""
        return self.P.loss == 1

    def newton_step(
        self, a1: float, a2: float, pen: int, b: np.ndarray, max_epochs: int = 100
    ) -> int:
        """One proximal Newton step on the working set; returns the BCD epochs it used.

        The loss is replaced by its second-order model around Z₀, Σ G∘ΔZ + ½ Σ D∘ΔZ² with
        G = ∇f(Z₀) and D the exact diagonal curvature s_i/n̄·σ(yz)(1 − σ(yz)); BCD with the exact
        coordinate curvatures Σ_i D_i x_ij² (invariant to the scale of each column) minimizes
        model + penalty over W_ws and b; a backtracking (Armijo) line search on the true objective
        along the resulting direction makes every step a descent step.
        """
        P, Z = self.P, self.Z
        G = P.dloss(Z)
        D = P.curvature(Z)
        if self.dense:
            X2 = self.Xsub**2
            rows: slice | np.ndarray
            Wcur, rows = self.Wws, slice(None)
            Xd, args = self.Xsub, (_EMPTY_F, _EMPTY_I, _EMPTY_I)
        else:
            Xc = P._Xs[:, self.ws]
            X2 = Xc.multiply(Xc)
            Wcur, rows = self.W, self.ws
            Xd, args = _DUMMY_X, (P._Xs.data, P._Xs.indices, P._Xs.indptr)
        Lm = np.ascontiguousarray(
            np.asarray(X2.T @ D) if P.layout == "shared" else P._xt_sparse_rhs(X2, P._indicator(D))
        )
        W_old = Wcur[rows].copy()
        b_old = b.copy()
        dZ = np.zeros_like(Z)
        loc = np.arange(self.ws.size, dtype=np.int64) if self.dense else self.ws
        used = 0
        for _ in range(max_epochs):
            before = Wcur[rows].copy()
            if P.layout == "shared":
                K.model_epoch_shared(
                    loc, Wcur, dZ, G, D, Xd, *args, not self.dense, Lm, a1, a2, pen
                )
            else:
                K.model_epoch_per_task(
                    loc, Wcur, dZ, G, D, P.task, Xd, *args, not self.dense, Lm, a1, a2, pen
                )
            if P.intercept_coord:  # exact intercept step on the model
                gb, hb = P.task_sum(G + D * dZ), P.task_sum(D)
                step = np.where(hb > 0, -gb / np.maximum(hb, 1e-300), 0.0)
                b += step
                dZ += step if P.layout == "shared" else step[P.task]
            used += 1
            if not before.size:
                break
            change = np.abs(Wcur[rows] - before).max()  # inner solve: until the epoch's move is
            if change <= 1e-3 * np.abs(Wcur[rows] - W_old).max():  # small against the step's
                break
        dW = Wcur[rows] - W_old
        db = b - b_old
        F0 = P.value(Z) + penalty_value(W_old, pen, a1, a2)
        decrease = (
            float((G * dZ).sum())
            + penalty_value(W_old + dW, pen, a1, a2)
            - penalty_value(W_old, pen, a1, a2)
        )
        tau = 1.0
        for _ in range(40):
            W_try = W_old + tau * dW
            F = P.value(Z + tau * dZ) + penalty_value(W_try, pen, a1, a2)
            if F0 + 1e-4 * tau * min(decrease, 0.0) >= F:
                break
            tau *= 0.5
        else:
            tau = 0.0  # no descent along the direction: keep the current point
        Wcur[rows] = W_old + tau * dW
        b[:] = b_old + tau * db
        Z += tau * dZ
        return used

    def epoch(self, a1: float, a2: float, pen: int) -> None:
        if self.gram:
            K.epoch_gram(self.Wws, self.Q, self.G, self.Lws, a1, a2, pen)
        elif self.dense:
            self.P.epoch_dense(self.Xsub, self.Wws, self.Lws, self.Z, a1, a2, pen)
        else:
            self.P.epoch(self.ws, self.W, self.Z, a1, a2, pen)

    def sync(self) -> None:
        """Write W_ws back into W (and, for Gram CD, Z ← Z + X_ws ΔW, Q recomputed from Z)."""
        if not self.dense:
            return
        self.W[self.ws] = self.Wws
        if self.gram:
            D = self.Wws - self.W_synced
            if D.any():
                self.Z += self.Xsub @ D
                self.W_synced = self.Wws.copy()
                self.Q = np.ascontiguousarray(self.Xsub.T @ self.P.dloss(self.Z))


def _choose_working_set(
    P: Problem,
    W: np.ndarray,
    Z: np.ndarray,
    V: np.ndarray,
    gap: float,
    prev_gap: float,
    ws_size: int,
    alive: np.ndarray,
    a1: float,
    pen: int,
    screening: bool,
    working_set: bool,
    p0: int,
) -> tuple[np.ndarray, int]:
    """Gap-safe screening (updates ``alive``, W and Z in place) and the next working set: the
    support plus the features closest to violating Ω*_j(x_jᵀθ) ≤ a1; returns (ws, ws_size).
    """
    dn = dual_norms(V, pen)
    if screening:
        r = np.sqrt(2.0 * max(gap, 0.0) * P.curv * P.inv_n * P.s_max)
        kill = alive & (dn + r * P.colnorm < a1)
        for j in np.flatnonzero(kill & (W != 0).any(axis=1)):
            P.sub_column(Z, int(j), W[j])
            W[j] = 0.0
        alive &= ~kill
    idx_alive = np.flatnonzero(alive)
    if not working_set:
        return idx_alive, idx_alive.size
    supp = (W != 0).any(axis=1)
    new_size = max(p0, 2 * int(supp.sum()))
    if gap > 0.5 * prev_gap:  # too little progress: grow the working set
        new_size = max(new_size, 2 * ws_size)
    ws_size = min(new_size, idx_alive.size)
    with np.errstate(divide="ignore"):
        score = (a1 - dn[idx_alive]) / P.colnorm[idx_alive]
    score[supp[idx_alive]] = -np.inf
    if ws_size < idx_alive.size:
        return np.sort(idx_alive[np.argpartition(score, ws_size - 1)[:ws_size]]), ws_size
    return idx_alive, ws_size


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
    # warm start: first ``check_every`` epochs on the support of W0 alone (no full Xᵀθ needed to
    # choose it), so a path step whose support does not change costs one full gap evaluation
    # instead of two
    warm_ws = np.flatnonzero(alive & (W != 0).any(axis=1)) if working_set else np.zeros(0)
    while True:
        if warm_ws.size:
            ws, warm_ws = warm_ws, np.zeros(0)
            ws_size = ws.size
            inner_tol = 0.5 * tol_abs
            check_first = True
        else:
            gap, _, V, _ = duality_gap(P, W, b, Z, a1, a2, pen)
            if gap <= tol_abs and not (
                n_epochs == 0 and not W.any() and zero_is_not_optimal(P, a1, pen)
            ):
                converged = True
                break
            if n_epochs >= max_iter:
                break
            ws, ws_size = _choose_working_set(
                P, W, Z, V, gap, prev_gap, ws_size, alive, a1, pen, screening, working_set, p0
            )
            prev_gap = gap
            inner_tol = max(0.3 * gap, 0.5 * tol_abs)
            check_first = False
        ws = np.ascontiguousarray(ws, dtype=np.int64)
        full = ws.size == p
        blk = _WorkingSet(P, ws, W, Z)
        k = 0
        if check_first and duality_gap(P, W, b, Z, a1, a2, pen, blk.Xsub)[0] <= inner_tol:
            continue  # W0 already solves the problem restricted to its support
        while n_epochs < max_iter:
            if blk.newton:
                n_epochs += blk.newton_step(a1, a2, pen, b)
                k = check_every  # check the gap after every Newton step
            else:
                blk.epoch(a1, a2, pen)
                P.intercept_step(b, Z)
                n_epochs += 1
                k += 1
            if k % check_every == 0:
                blk.sync()
                if full:
                    break  # the outer gap is the gap of this subproblem
                if check_first:
                    break  # one round on the old support, then the full gap decides
                g_in = duality_gap(P, W, b, Z, a1, a2, pen, blk.Xsub)[0]
                if g_in <= inner_tol:
                    break
        blk.sync()
    if not converged:
        warn_at_user(
            f"The solver did not reach the duality gap tolerance {tol_abs:.3g} in {max_iter} "
            f"epochs (gap {gap:.3g}). Increase max_iter, loosen tol, or scale the features.",
            ConvergenceWarning,
        )
    return SolverResult(
        W=W,
        b=b,
        gap=float(gap),
        n_iter=n_epochs,
        converged=converged,
        tol_abs=float(tol_abs),
        n_screened=int(p - alive.sum()),
    )
