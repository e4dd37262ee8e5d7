"""The optimization problem behind every estimator, in one representation.

    min_{W, b}  f(Z) + a1·Ω(W) + (a2/2)·‖W‖_F²,   Z = XW + 1bᵀ  (or z_i = x_i·w_{t(i)} + b_{t(i)}),
    f(Z) = (1/n̄) Σ_i s_i ℓ(z_i, y_i),

with Ω = Σ_j ‖W_j‖₂ (l21), Σ_jt |W_jt| (l1) or 0 (l2). Two layouts: ``shared`` (one design X of
shape (n, p) for all T tasks, Z and Y of shape (n, T)) and ``per_task`` (the tasks' designs
stacked row-wise, rows sorted by task, z and y of shape (N,), ``task[i]`` the task of row i).
The dual of the problem is max_θ −Σ f*(−θ) − h*(Xᵀθ) subject to Σ_{i∈t} θ_it = 0 when an
intercept is fitted; −∇f(Z) is turned into a feasible θ to get the duality gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import entr, expit, log_expit

from . import _kernels as K
from ._inputs import Matrix


def logsumexp(Z: np.ndarray, axis: int = 1, keepdims: bool = False) -> np.ndarray:
    """log Σ_k exp(Z_k) along ``axis``, stable (plain numpy: scipy's is slow on small arrays)."""
    m = Z.max(axis=axis, keepdims=True)
    out = m + np.log(np.exp(Z - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


LOSSES = {"quadratic": 0, "logistic": 1, "multinomial": 2}
PENALTIES = {"l21": 0, "l1": 1, "l2": 2}
CURVATURE = {0: 1.0, 1: 0.25, 2: 0.5}  # Lipschitz constant of ℓ'' (softmax Hessian ≤ ½ I)


@dataclass
class Problem:
    """Data of one fit (see the module docstring); built by :func:`make_problem`."""

    layout: str
    loss: int
    Xd: np.ndarray  # dense (rows, p) (per task: Fortran-ordered), or a (1, 1) dummy when sparse
    Xs: sp.csc_matrix | None
    Y: np.ndarray  # (n, T) shared; (N,) per task
    S: np.ndarray  # sample weights, Σ_{i∈t} s_i = n_t
    n_tasks: int
    inv_n: float
    intercept_coord: bool  # intercept fitted as a coordinate (else handled by centering or absent)
    task: np.ndarray | None = None
    offsets: np.ndarray | None = None
    x_offset: np.ndarray | None = None  # weighted means removed when centering ((p,) or (p, T))
    y_offset: np.ndarray | None = None  # (T,)
    center: np.ndarray | None = None  # (p,): the design is Xd − 1·centerᵀ, never materialized
    Lmat: np.ndarray = field(init=False)
    Lb: np.ndarray = field(init=False)
    colnorm: np.ndarray = field(init=False)
    _all_columns: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        c = CURVATURE[self.loss]
        self.curv = c
        if self.layout == "shared":
            if self.sparse:
                X2 = self._Xs.multiply(self._Xs)
                sq, wsq = np.asarray(X2.sum(axis=0)).ravel(), np.asarray(X2.T @ self.S).ravel()
            else:  # no n × p temporary
                sq, wsq = self._dense_sq_norms()
            self.Lmat = np.repeat((c * self.inv_n * wsq)[:, None], self.n_tasks, axis=1)
            self.colnorm = np.sqrt(sq)
            self.Lb = np.full(self.n_tasks, c * self.inv_n * self.S.sum())
        else:
            X2 = self._Xs.multiply(self._Xs) if self.sparse else self.Xd**2
            M = self._indicator(self.S)
            self.Lmat = c * self.inv_n * self._xt_sparse_rhs(X2, M)
            sq = self._xt_sparse_rhs(X2, self._indicator(np.ones_like(self.S)))
            self.colnorm = np.sqrt(sq.max(axis=1))
            self.Lb = c * self.inv_n * np.bincount(self._task, self.S, minlength=self.n_tasks)
        self.Lmat = np.ascontiguousarray(self.Lmat)
        self.s_max = float(self.S.max())

    def _dense_sq_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_i x̃_ij², Σ_i s_i x̃_ij²) of the (implicitly centered) dense shared design x̃."""
        X, S = self.Xd, self.S
        unit = bool(np.all(S == 1.0))
        sq = np.einsum("ij,ij->j", X, X)
        wsq = sq if unit else np.einsum("ij,ij,i->j", X, X, S)
        if self.center is None:
            return sq, wsq
        mu = self.center  # weighted mean: Σ s_i (x_ij − μ_j)² = Σ s_i x_ij² − (Σ s) μ_j²
        raw = wsq
        wsq = np.maximum(wsq - S.sum() * mu**2, 0.0)
        sq = wsq if unit else np.maximum(sq - 2 * mu * X.sum(axis=0) + X.shape[0] * mu**2, 0.0)
        bad = np.flatnonzero(wsq <= 1e-8 * raw)  # cancellation: recompute these columns exactly
        if bad.size:
            Xc = X[:, bad] - mu[bad]
            sq[bad] = np.einsum("ij,ij->j", Xc, Xc)
            wsq[bad] = sq[bad] if unit else np.einsum("ij,ij,i->j", Xc, Xc, S)
        return sq, wsq

    # ----------------------------------------------------------------- linear algebra
    @property
    def sparse(self) -> bool:
        return self.Xs is not None

    @property
    def _Xs(self) -> sp.csc_matrix:
        """The sparse design (sparse problems only)."""
        if self.Xs is None:
            raise RuntimeError("this problem has a dense design (Xd), not a sparse one")
        return self.Xs

    @property
    def _task(self) -> np.ndarray:
        """The task of each row (per-task layout only)."""
        if self.task is None:
            raise RuntimeError("the shared layout has no per-row task index")
        return self.task

    @property
    def _offsets(self) -> np.ndarray:
        """Row offsets of the tasks, (T + 1,) (per-task layout only)."""
        if self.offsets is None:
            raise RuntimeError("the shared layout has no per-task row offsets")
        return self.offsets

    @property
    def n_features(self) -> int:
        return self._Xs.shape[1] if self.sparse else self.Xd.shape[1]

    def _indicator(self, v: np.ndarray) -> sp.csr_matrix:
        N = v.shape[0]
        return sp.csr_matrix((v, (np.arange(N), self.task)), shape=(N, self.n_tasks))

    def _xt_sparse_rhs(self, X: Matrix, M: sp.csr_matrix) -> np.ndarray:
        if sp.issparse(X):
            return np.asarray((X.T @ M).toarray())
        return np.asarray((M.T @ X).T)

    def columns(self, cols: np.ndarray) -> Matrix:
        """The design restricted to ``cols`` (dense: centered and column-major), for repeated
        :meth:`xt` calls and the working-set epochs; read only. A subset is a copy; every column
        in order is the design itself when it needs neither centering nor reordering, else one
        copy made once per fit (not once per outer iteration).
        """
        if self.sparse:
            return self._Xs[:, cols]
        every = cols.size == self.n_features and bool(np.all(cols == np.arange(cols.size)))
        if every and self._all_columns is not None:
            return self._all_columns
        if every and self.center is None and self.Xd.flags.f_contiguous:
            Xc = self.Xd
        else:
            Xc = np.asfortranarray(self.Xd[:, cols])
            if self.center is not None:
                Xc -= self.center[cols]
        if every:
            self._all_columns = Xc
        return Xc

    def dense_design(self) -> np.ndarray:
        """The dense design with the centering applied (materialized: for the torch solver)."""
        return self.Xd if self.center is None else self.Xd - self.center

    def xt(self, theta: np.ndarray, Xsub: Matrix | None = None) -> np.ndarray:
        """V = Xᵀθ (or Xsubᵀθ), shape (p, T); per task V_jt = Σ_{i∈t} x_ij θ_i."""
        X = Xsub if Xsub is not None else (self._Xs if self.sparse else self.Xd)
        if self.layout == "shared":
            V = np.asarray(X.T @ theta)
            if Xsub is None and self.center is not None:  # (X − 1μᵀ)ᵀθ = Xᵀθ − μ(1ᵀθ)
                V -= np.outer(self.center, theta.sum(axis=0))
            return V
        return self._xt_sparse_rhs(X, self._indicator(theta))

    def predict(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Z = XW + b (shared) or z_i = x_i·w_{t(i)} + b_{t(i)} (per task)."""
        X = self._Xs if self.sparse else self.Xd
        if self.layout == "shared":
            rows = np.flatnonzero(W.any(axis=1))
            if rows.size == 0:
                return np.zeros((X.shape[0], W.shape[1])) + b
            if rows.size < 0.5 * W.shape[0]:  # only the support's columns
                Z = np.asarray(X[:, rows] @ W[rows])
            else:
                Z = np.asarray(X @ W)
            if self.center is not None:
                Z -= self.center[rows] @ W[rows]
            return Z + b
        z = np.empty(self.Y.shape[0])
        Xr = self._Xs.tocsr() if self.sparse else X
        for t in range(self.n_tasks):
            lo, hi = self._offsets[t], self._offsets[t + 1]
            z[lo:hi] = np.asarray(Xr[lo:hi] @ W[:, t]).ravel() + b[t]
        return z

    def sub_column(self, Z: np.ndarray, j: int, w_j: np.ndarray) -> None:
        """Z ← Z − x_j w_jᵀ (used when a screened feature still holds a nonzero row)."""
        col = self._Xs[:, j].toarray().ravel() if self.sparse else self.Xd[:, j]
        if self.center is not None:
            col = col - self.center[j]
        if self.layout == "shared":
            Z -= np.outer(col, w_j)
        else:
            Z -= col * w_j[self.task]

    # ----------------------------------------------------------------- solver steps
    def epoch(
        self, ws: np.ndarray, W: np.ndarray, Z: np.ndarray, a1: float, a2: float, pen: int
    ) -> None:
        """One epoch over the features ``ws`` indexing the full design (dense: uncentered only;
        the solver uses :meth:`epoch_dense` on a compact block).
        """
        if self.center is not None:
            raise RuntimeError("implicitly centered design: use epoch_dense on columns(ws)")
        if self.sparse:
            Xs = self._Xs
            args = (Xs.data, Xs.indices, Xs.indptr)
        else:
            args = (_EMPTY_F, _EMPTY_I, _EMPTY_I)
        self._epoch(ws, W, Z, self.Xd, args, self.sparse, self.Lmat, a1, a2, pen)

    def epoch_dense(
        self,
        Xsub: np.ndarray,
        Wsub: np.ndarray,
        Lsub: np.ndarray,
        Z: np.ndarray,
        a1: float,
        a2: float,
        pen: int,
    ) -> None:
        """One epoch over all columns of the compact dense block ``Xsub`` (from :meth:`columns`)
        with their rows ``Wsub`` of W and Lipschitz constants ``Lsub``.
        """
        loc = np.arange(Xsub.shape[1], dtype=np.int64)
        empty = (_EMPTY_F, _EMPTY_I, _EMPTY_I)
        self._epoch(loc, Wsub, Z, Xsub, empty, False, Lsub, a1, a2, pen)

    def _epoch(
        self,
        ws: np.ndarray,
        W: np.ndarray,
        Z: np.ndarray,
        Xd: np.ndarray,
        csc: tuple[np.ndarray, np.ndarray, np.ndarray],
        sparse: bool,
        L: np.ndarray,
        a1: float,
        a2: float,
        pen: int,
    ) -> None:
        """One coordinate-descent pass of the compiled kernel of this layout over the columns
        ``ws`` of the dense block ``Xd`` or of the CSC arrays ``csc`` (data, indices, indptr).
        """
        tail = (sparse, L, self.loss, self.inv_n, a1, a2, pen)
        if self.layout == "shared":
            K.epoch_shared(ws, W, Z, self.Y, self.S, Xd, *csc, *tail)
        else:
            K.epoch_per_task(ws, W, Z, self.Y, self.S, self.task, Xd, *csc, *tail)

    def intercept_step(self, b: np.ndarray, Z: np.ndarray) -> None:
        if not self.intercept_coord:
            return
        if self.layout == "shared":
            K.intercept_step_shared(b, Z, self.Y, self.S, self.loss, self.inv_n, self.Lb)
        else:
            K.intercept_step_per_task(
                b, Z, self.Y, self.S, self.task, self.loss, self.inv_n, self.Lb
            )

    # ----------------------------------------------------------------- loss and its dual
    def dloss(self, Z: np.ndarray) -> np.ndarray:
        """∇f(Z), same shape as Z."""
        w = self.S * self.inv_n
        if self.layout == "shared":
            w = w[:, None]
        if self.loss == 0:
            return w * (Z - self.Y)
        if self.loss == 1:
            return -w * self.Y * expit(-self.Y * Z)
        P = np.exp(Z - logsumexp(Z, axis=1, keepdims=True))
        return w * (P - self.Y)

    def curvature(self, Z: np.ndarray) -> np.ndarray:
        """Diagonal of ∇²f(Z) (same shape as Z): s_i/n̄ for the quadratic loss,
        s_i/n̄·σ(yz)(1 − σ(yz)) for the logistic loss, s_i/n̄·p(1 − p) (softmax) for multinomial.
        """
        w = self.S * self.inv_n
        if self.layout == "shared":
            w = w[:, None]
        if self.loss == 0:
            return np.broadcast_to(w, Z.shape).copy()
        if self.loss == 1:
            p = expit(self.Y * Z)
            return w * p * (1.0 - p)
        P = np.exp(Z - logsumexp(Z, axis=1, keepdims=True))
        return w * P * (1.0 - P)

    def task_sum(self, A: np.ndarray) -> np.ndarray:
        """Σ over the samples of each task: column sums (shared) or per-task sums (per task)."""
        if self.layout == "shared":
            return A.sum(axis=0)
        return np.bincount(self._task, A, minlength=self.n_tasks)

    def value(self, Z: np.ndarray) -> float:
        """f(Z)."""
        w = self.S * self.inv_n
        if self.loss == 0:
            ell = 0.5 * (Z - self.Y) ** 2
        elif self.loss == 1:
            ell = -log_expit(self.Y * Z)
        else:
            ell = logsumexp(Z, axis=1) - (Z * self.Y).sum(axis=1)
        if ell.ndim == 2:
            ell = ell.sum(axis=1)
        return float(w @ ell)

    def dual_value(self, theta: np.ndarray) -> float:
        """−Σ f*(−θ): quadratic θy − n̄θ²/(2s); logistic and multinomial (s/n̄)·entropy."""
        w = self.S * self.inv_n
        if self.layout == "shared":
            w = w[:, None]
        if self.loss == 0:
            return float((theta * self.Y - theta**2 / (2 * w)).sum())
        if self.loss == 1:
            u = np.clip(self.Y * theta / w, 0.0, 1.0)
            return float((w * (entr(u) + entr(1.0 - u))).sum())
        P = np.clip(self.Y - theta / w, 0.0, 1.0)
        return float((w * entr(P)).sum())

    def refit_intercept(self, b: np.ndarray, Z: np.ndarray) -> None:
        """Make the intercept optimal for the current W (exact step or Newton), in place."""
        if not self.intercept_coord:
            return
        if self.loss == 0:
            self.intercept_step(b, Z)
            return
        for _ in range(50):
            D = self.dloss(Z)
            if self.layout == "shared":
                g = D.sum(axis=0)
                if self.loss == 1:
                    p = expit(Z)
                    h = (self.S * self.inv_n) @ (p * (1 - p))
                    step = -g / np.maximum(h, 1e-300)
                else:
                    P = np.exp(Z - logsumexp(Z, axis=1, keepdims=True))
                    Sw = (self.S * self.inv_n)[:, None]
                    H = np.diag((Sw * P).sum(0)) - (Sw * P).T @ P
                    step = -np.linalg.lstsq(H, g, rcond=None)[0]
                b += step
                Z += step
            else:
                g = np.bincount(self._task, D, minlength=self.n_tasks)
                p = expit(Z)
                h = np.bincount(
                    self._task, self.S * self.inv_n * p * (1 - p), minlength=self.n_tasks
                )
                step = -g / np.maximum(h, 1e-300)
                b += step
                Z += step[self.task]
            if np.abs(step).max() <= 1e-10 * (1.0 + np.abs(b).max()) or np.abs(g).max() <= 1e-15:
                break

    def feasible_theta(self, Z: np.ndarray) -> np.ndarray:
        """θ = −∇f(Z), with the per-task sums removed when an intercept is fitted."""
        theta = -self.dloss(Z)
        if self.intercept_coord:
            if self.layout == "shared":
                theta -= theta.mean(axis=0)
            else:
                cnt = np.bincount(self._task, minlength=self.n_tasks)
                theta -= (np.bincount(self._task, theta, minlength=self.n_tasks) / cnt)[self._task]
        return theta


_EMPTY_F = np.zeros(0)
_EMPTY_I = np.zeros(0, dtype=np.int32)


def _wmean(A: np.ndarray, w: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.asarray((A.T @ w) if A.ndim == 2 else A @ w).ravel() / w.sum()


def make_problem(
    X: Matrix,
    Y: np.ndarray,
    S: np.ndarray,
    *,
    loss: str,
    fit_intercept: bool,
    task: np.ndarray | None,
    n_tasks: int,
) -> Problem:
    """Build a :class:`Problem` from validated float arrays.

    ``X`` is a dense array or scipy.sparse matrix (rows stacked by task for the per-task layout,
    with ``task`` the sorted task index of each row); ``S`` the sample weights, rescaled here so
    that they sum to n_t within each task. A dense quadratic problem with an intercept is centered
    (weighted means removed), which makes the intercept drop out; otherwise the intercept is an
    extra coordinate of the descent, and a dense shared design is still centered implicitly
    (``center``; the solver's b is then the intercept of the centered design, see
    :func:`~taskgrad.linear._estimators.intercept_from`).
    """
    code = LOSSES[loss]
    sparse = sp.issparse(X)
    layout = "shared" if task is None else "per_task"
    S = np.asarray(S, dtype=np.float64)
    if task is None:  # the shared layout
        S = S * (S.shape[0] / S.sum())
        n_bar = float(S.shape[0])
        offsets = None
    else:
        cnt = np.bincount(task, minlength=n_tasks).astype(float)
        tot = np.bincount(task, S, minlength=n_tasks)
        S = S * (cnt / np.where(tot > 0, tot, 1.0))[task]  # a task may have no rows (CV)
        n_bar = S.shape[0] / n_tasks
        offsets = np.concatenate([[0], np.cumsum(cnt).astype(np.int64)])
    x_off = y_off = center = None
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    if sparse:
        Xs = sp.csc_matrix(X, dtype=np.float64)
        Xs.sort_indices()
        Xs.indices = Xs.indices.astype(np.int32, copy=False)
        Xs.indptr = Xs.indptr.astype(np.int32, copy=False)
        Xd = np.zeros((1, 1), order="F")
    else:
        Xs = None
        Xd = np.asarray(X, dtype=np.float64)
    coord = fit_intercept
    if fit_intercept and code == 0 and not sparse:
        Y = Y.copy()
        if offsets is None:  # the shared layout
            x_off = center = _wmean(Xd, S)  # X is centered implicitly: no n × p copy
            y_off = _wmean(Y, S)
            Y -= y_off
        else:
            Xd = np.array(Xd, order="F")
            x_off = np.empty((Xd.shape[1], n_tasks))
            y_off = np.empty(n_tasks)
            for t in range(n_tasks):
                lo, hi = offsets[t], offsets[t + 1]
                x_off[:, t] = _wmean(Xd[lo:hi], S[lo:hi])
                y_off[t] = S[lo:hi] @ Y[lo:hi] / S[lo:hi].sum()
                Xd[lo:hi] -= x_off[:, t]
                Y[lo:hi] -= y_off[t]
        coord = False
    elif fit_intercept and not sparse and layout == "shared":
        # logistic losses: the columns are centered implicitly too (z = X̃W + b' with
        # b' = b + μᵀW, an equivalent problem since b is not penalized); the intercept stays a
        # coordinate but no longer competes with uncentered columns, which made BCD crawl
        x_off = center = _wmean(Xd, S)
    if not sparse and layout == "per_task":
        Xd = np.asfortranarray(Xd)
    return Problem(
        layout=layout,
        loss=code,
        Xd=Xd,
        Xs=Xs,
        Y=Y,
        S=np.ascontiguousarray(S),
        n_tasks=n_tasks,
        inv_n=1.0 / n_bar,
        intercept_coord=coord,
        task=None if task is None else np.ascontiguousarray(task, dtype=np.int64),
        offsets=offsets,
        x_offset=x_off,
        y_offset=y_off,
        center=center,
    )
