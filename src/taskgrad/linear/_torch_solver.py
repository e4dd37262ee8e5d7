"""Accelerated proximal gradient (FISTA with adaptive restart) in torch, for ``device="cuda"``.

Iterates (W, b) ← prox_{h/L}((W, b)_y − ∇f/L) from the extrapolated point, L = c·λ_max(XᵀSX)/n̄
(power iteration, intercept column included), restarting the momentum when ⟨y − x⁺, x⁺ − x⟩ > 0
(O'Donoghue & Candès). Every ``check_every`` iterations the duality gap is computed exactly as on
the CPU (same dual point, same scaling) and the solver stops when it is ≤ tol·f(0).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ._problem import Problem
from ._solver import SolverResult, datafit_at_zero, zero_is_not_optimal
from ._warn import warn_at_user


def _entr(u: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(u, u)


def _csr_tensor(M: Any, **kw: Any) -> Tensor:
    """The scipy.sparse matrix M as a torch CSR tensor (``kw``: its dtype and device)."""
    Mr = sp.csr_matrix(M)
    return torch.sparse_csr_tensor(
        torch.from_numpy(Mr.indptr.astype(np.int64)),
        torch.from_numpy(Mr.indices.astype(np.int64)),
        torch.from_numpy(Mr.data),
        size=Mr.shape,
        check_invariants=False,
        **kw,
    )


class _Ops:
    """The problem's data on a torch device."""

    def __init__(self, P: Problem, device: torch.device, dtype: torch.dtype) -> None:
        self.P = P
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.XT: Tensor | None  # Xᵀ as a CSR tensor (sparse designs)
        if P.sparse:
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.X = _csr_tensor(P._Xs, **kw)
            self.XT = _csr_tensor(P._Xs.T, **kw)
        else:
            self.X = torch.as_tensor(np.ascontiguousarray(P.dense_design()), **kw)
            self.XT = None
        self.Y = torch.as_tensor(P.Y, **kw)
        w = torch.as_tensor(P.S * P.inv_n, **kw)
        self.w = w[:, None] if P.layout == "shared" else w
        self.shared = P.layout == "shared"
        if not self.shared:
            self.task = torch.as_tensor(P._task, device=device)
            self.off = [int(o) for o in P._offsets]
        self.T = P.n_tasks

    def _mm(self, A: Tensor, B: Tensor) -> Tensor:
        return torch.sparse.mm(A, B) if A.layout != torch.strided else A @ B

    def mv(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self._mm(self.X, W) + b
        if self.P.sparse:
            full = self._mm(self.X, W)  # (N, T): only the own-task column is used
            return full.gather(1, self.task[:, None]).squeeze(1) + b[self.task]
        z = torch.empty(self.Y.shape[0], dtype=W.dtype, device=W.device)
        for t in range(self.T):
            lo, hi = self.off[t], self.off[t + 1]
            z[lo:hi] = self.X[lo:hi] @ W[:, t] + b[t]
        return z

    def rmv(self, theta: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self._mm(self.XT, theta) if self.XT is not None else self.X.T @ theta
        M = torch.zeros(theta.shape[0], self.T, dtype=theta.dtype, device=theta.device)
        M[torch.arange(theta.shape[0], device=theta.device), self.task] = theta
        return self._mm(self.XT, M) if self.XT is not None else self.X.T @ M

    def task_sum(self, D: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return D.sum(0)
        return torch.zeros(self.T, dtype=D.dtype, device=D.device).index_add_(0, self.task, D)

    def dloss(self, Z: Tensor) -> Tensor:
        loss = self.P.loss
        if loss == 0:
            return self.w * (Z - self.Y)
        if loss == 1:
            return -self.w * self.Y * torch.sigmoid(-self.Y * Z)
        return self.w * (torch.softmax(Z, dim=1) - self.Y)

    def value(self, Z: Tensor) -> Tensor:
        loss = self.P.loss
        if loss == 0:
            ell = 0.5 * (Z - self.Y) ** 2
        elif loss == 1:
            ell = -torch.nn.functional.logsigmoid(self.Y * Z)
        else:
            ell = torch.logsumexp(Z, 1, keepdim=True) - (Z * self.Y).sum(1, keepdim=True)
        return (self.w * ell).sum()

    def dual_value(self, theta: Tensor) -> Tensor:
        loss = self.P.loss
        if loss == 0:
            return (theta * self.Y - theta**2 / (2 * self.w)).sum()
        if loss == 1:
            u = (self.Y * theta / self.w).clamp(0, 1)
            return (self.w * (_entr(u) + _entr(1 - u))).sum()
        Pm = (self.Y - theta / self.w).clamp(0, 1)
        return (self.w * _entr(Pm)).sum()

    def refit_intercept(self, b: Tensor, Z: Tensor) -> None:
        P = self.P
        if not P.intercept_coord:
            return
        for _ in range(50 if P.loss else 1):
            D = self.dloss(Z)
            g = self.task_sum(D)
            if P.loss == 0:
                step = -g / torch.as_tensor(P.Lb, dtype=Z.dtype, device=Z.device)
            elif P.loss == 1:
                p = torch.sigmoid(Z)
                h = self.task_sum(self.w * p * (1 - p))
                step = -g / h.clamp_min(1e-300)
            else:
                Pm = torch.softmax(Z, 1)
                H = torch.diag((self.w * Pm).sum(0)) - (self.w * Pm).T @ Pm
                step = -(torch.linalg.pinv(H) @ g)
            b += step
            Z += step if self.shared else step[self.task]
            if (
                float(step.abs().max()) <= 1e-10 * (1.0 + float(b.abs().max()))
                or float(g.abs().max()) <= 1e-15
            ):
                break

    def feasible_theta(self, Z: Tensor) -> Tensor:
        theta = -self.dloss(Z)
        if self.P.intercept_coord:
            if self.shared:
                theta = theta - theta.mean(0)
            else:
                cnt = torch.as_tensor(np.diff(self.P._offsets), dtype=Z.dtype, device=Z.device)
                theta = theta - (self.task_sum(theta) / cnt)[self.task]
        return theta


def _prox(U: Tensor, thr: float | Tensor, shrink: float, pen: int) -> Tensor:
    if pen == 0:
        nrm = U.norm(dim=1, keepdim=True)
        return U * (1 - thr / nrm.clamp_min(1e-300)).clamp_min(0) / shrink
    if pen == 1:
        return torch.sign(U) * (U.abs() - thr).clamp_min(0) / shrink
    return U / shrink


def _pen_value(W: Tensor, pen: int, a1: float, a2: float) -> Tensor:
    val = 0.5 * a2 * (W**2).sum()
    if pen == 0:
        val = val + a1 * W.norm(dim=1).sum()
    elif pen == 1:
        val = val + a1 * W.abs().sum()
    return val


def _dual_norms(V: Tensor, pen: int) -> Tensor:
    return V.abs().amax(1) if pen == 1 else V.norm(dim=1)


def _gap(ops: _Ops, W: Tensor, b: Tensor, Z: Tensor, a1: float, a2: float, pen: int) -> float:
    ops.refit_intercept(b, Z)
    theta = ops.feasible_theta(Z)
    V = ops.rmv(theta)
    if a2 == 0.0:
        dn = float(_dual_norms(V, pen).max())
        if dn > a1:
            theta, V = theta * (a1 / dn), V * (a1 / dn)
        conj: float | Tensor = 0.0
    else:
        if pen == 0:
            conj = ((V.norm(dim=1) - a1).clamp_min(0) ** 2).sum() / (2 * a2)
        elif pen == 1:
            conj = ((V.abs() - a1).clamp_min(0) ** 2).sum() / (2 * a2)
        else:
            conj = (V**2).sum() / (2 * a2)
    primal = ops.value(Z) + _pen_value(W, pen, a1, a2)
    return float(primal - (ops.dual_value(theta) - conj))


def _lipschitz(ops: _Ops, p: int, n_iter: int = 100) -> float:
    """c·λ_max of the Hessian bound (XᵀSX, intercept column included), by power iteration."""
    P = ops.P
    gen = torch.Generator(device="cpu").manual_seed(0)
    dev, dt = ops.Y.device, ops.Y.dtype
    W = torch.randn(p, ops.T, generator=gen, dtype=dt).to(dev)
    b = (
        torch.randn(ops.T, generator=gen, dtype=dt).to(dev)
        if P.intercept_coord
        else torch.zeros(ops.T, dtype=dt, device=dev)
    )
    lam = 0.0
    for _ in range(n_iter):
        nrm = math.sqrt(float((W**2).sum() + (b**2).sum()))
        W, b = W / nrm, b / nrm
        Zv = ops.w * ops.mv(W, b)
        W2 = ops.rmv(Zv)
        b2 = ops.task_sum(Zv) if P.intercept_coord else torch.zeros_like(b)
        new = math.sqrt(float((W2**2).sum() + (b2**2).sum()))
        W, b = W2, b2
        if abs(new - lam) <= 1e-7 * new:
            lam = new
            break
        lam = new
    return 1.02 * P.curv * lam


def solve_apg(
    P: Problem,
    a1: float,
    a2: float,
    pen: int,
    *,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float64,
    W0: np.ndarray | None = None,
    b0: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 10000,
    check_every: int = 10,
    tol_abs: float | None = None,
) -> SolverResult:
    """FISTA with restart on ``device``; ``max_iter`` bounds the gradient steps."""
    device = torch.device(device)
    ops = _Ops(P, device, dtype)
    p, T = P.n_features, P.n_tasks
    if tol_abs is None:
        tol_abs = tol * datafit_at_zero(P)
    W = (
        torch.zeros(p, T, dtype=dtype, device=device)
        if W0 is None
        else torch.as_tensor(np.asarray(W0, dtype=np.float64), dtype=dtype, device=device).clone()
    )
    b = torch.zeros(T, dtype=dtype, device=device)
    if b0 is not None and P.intercept_coord:
        b = torch.as_tensor(np.asarray(b0, dtype=np.float64), dtype=dtype, device=device).clone()
    L = _lipschitz(ops, p)
    if L == 0.0:
        L = 1.0
    Wy, by, t = W.clone(), b.clone(), 1.0
    gap, it, converged = math.inf, 0, False
    while True:
        if it % check_every == 0:
            Z = ops.mv(W, b)
            gap = _gap(ops, W, b, Z, a1, a2, pen)  # refits b (a better point, kept)
            if gap <= tol_abs and not (
                it == 0 and not bool(W.any()) and zero_is_not_optimal(P, a1, pen)
            ):
                converged = True
                break
            if it >= max_iter:
                break
        D = ops.dloss(ops.mv(Wy, by))
        Wn = _prox(Wy - ops.rmv(D) / L, a1 / L, 1 + a2 / L, pen)
        bn = by - ops.task_sum(D) / L if P.intercept_coord else by
        if float(((Wy - Wn) * (Wn - W)).sum() + ((by - bn) * (bn - b)).sum()) > 0:
            t = 1.0  # adaptive restart
        tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
        Wy = Wn + ((t - 1) / tn) * (Wn - W)
        by = bn + ((t - 1) / tn) * (bn - b)
        W, b, t = Wn, bn, tn
        it += 1
    if not converged:
        warn_at_user(
            f"The accelerated proximal gradient did not reach the duality gap tolerance "
            f"{tol_abs:.3g} in {max_iter} iterations (gap {gap:.3g}). Increase max_iter or "
            "loosen tol.",
            ConvergenceWarning,
        )
    return SolverResult(
        W=W.double().cpu().numpy(),
        b=b.double().cpu().numpy(),
        gap=gap,
        n_iter=it,
        converged=converged,
        tol_abs=float(tol_abs),
        n_screened=0,
    )
