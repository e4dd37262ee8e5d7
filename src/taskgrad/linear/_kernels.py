"""Block coordinate descent epochs (numba-compiled when numba is installed).

One epoch visits the features of a working set; for feature j it takes the block
W_j ← prox_{h/L_j}(W_j − ∇_j f / L_j) with h = a1·Ω + (a2/2)‖·‖², which is the exact block
minimizer for the quadratic loss with a shared design and a majorize-minimize step otherwise.
The linear predictions Z = XW (+ b) are updated in place after each block.

Codes: loss 0 = quadratic ½(z − y)², 1 = binary logistic log(1 + e^{−yz}) (y ∈ {−1, 1}),
2 = multinomial logsumexp(z) − z_y (y one-hot); penalty 0 = l21 (rows), 1 = l1, 2 = l2 only.
Every loss term is weighted by s_i / n̄ (``S`` and ``inv_n``).
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import HAVE_NUMBA, njit  # noqa: F401  (HAVE_NUMBA re-exported; without numba the kernels run as Python)


@njit(cache=True)
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True)
def _dloss_row(
    i: int, Z: np.ndarray, Y: np.ndarray, S: np.ndarray, loss: int, inv_n: float, out: np.ndarray
) -> None:
    """out[t] = ∂f/∂Z[i, t] for the shared-design layout (rows of Z are samples)."""
    T = Z.shape[1]
    s = S[i] * inv_n
    if loss == 0:
        for t in range(T):
            out[t] = s * (Z[i, t] - Y[i, t])
    elif loss == 1:
        for t in range(T):
            out[t] = -s * Y[i, t] * _sigmoid(-Y[i, t] * Z[i, t])
    else:
        mx = Z[i, 0]
        for t in range(1, T):
            if Z[i, t] > mx:
                mx = Z[i, t]
        se = 0.0
        for t in range(T):
            out[t] = math.exp(Z[i, t] - mx)
            se += out[t]
        for t in range(T):
            out[t] = s * (out[t] / se - Y[i, t])


@njit(cache=True)
def _dloss_scalar(z: float, y: float, s: float, loss: int) -> float:
    if loss == 0:
        return s * (z - y)
    return -s * y * _sigmoid(-y * z)


@njit(cache=True)
def _prox_row(
    W: np.ndarray,
    j: int,
    g: np.ndarray,
    Lrow: np.ndarray,
    a1: float,
    a2: float,
    pen: int,
    delta: np.ndarray,
) -> bool:
    """Write the new row j of W (from gradient g) and delta = new − old; return True if changed."""
    T = W.shape[1]
    changed = False
    if pen == 0:
        L = 0.0
        for t in range(T):
            if Lrow[t] > L:
                L = Lrow[t]
        if L == 0.0:
            return False
        nrm = 0.0
        for t in range(T):
            u = W[j, t] - g[t] / L
            delta[t] = u
            nrm += u * u
        nrm = math.sqrt(nrm)
        scale = 0.0
        if nrm > a1 / L:
            scale = (1.0 - a1 / (L * nrm)) / (1.0 + a2 / L)
        for t in range(T):
            new = scale * delta[t]
            delta[t] = new - W[j, t]
            if delta[t] != 0.0:
                changed = True
                W[j, t] = new
    else:
        for t in range(T):
            L = Lrow[t]
            if L == 0.0:
                delta[t] = 0.0
                continue
            u = W[j, t] - g[t] / L
            if pen == 1:
                thr = a1 / L
                if u > thr:
                    u = u - thr
                elif u < -thr:
                    u = u + thr
                else:
                    u = 0.0
            new = u / (1.0 + a2 / L)
            delta[t] = new - W[j, t]
            if delta[t] != 0.0:
                changed = True
                W[j, t] = new
    return changed


@njit(cache=True)
def _add_column(
    Z: np.ndarray,
    Xd: np.ndarray,
    jd: int,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    js: int,
    sparse: bool,
    delta: np.ndarray,
) -> None:
    """Z[i, :] += x_ij · delta over the non-zeros of column j (dense column ``jd`` of Xd, or
    sparse column ``js`` of the CSC arrays): the shared design's residual update.
    """
    T = Z.shape[1]
    if sparse:
        for k in range(Xptr[js], Xptr[js + 1]):
            i = Xind[k]
            x = Xdata[k]
            for t in range(T):
                Z[i, t] += x * delta[t]
    else:
        for i in range(Z.shape[0]):
            x = Xd[i, jd]
            if x != 0.0:
                for t in range(T):
                    Z[i, t] += x * delta[t]


@njit(cache=True)
def _add_column_per_task(
    z: np.ndarray,
    task: np.ndarray,
    Xd: np.ndarray,
    jd: int,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    js: int,
    sparse: bool,
    delta: np.ndarray,
) -> None:
    """z[i] += x_ij · delta[task[i]] over the non-zeros of column j (per-task designs)."""
    if sparse:
        for k in range(Xptr[js], Xptr[js + 1]):
            i = Xind[k]
            z[i] += Xdata[k] * delta[task[i]]
    else:
        for i in range(z.shape[0]):
            x = Xd[i, jd]
            if x != 0.0:
                z[i] += x * delta[task[i]]


@njit(cache=True)
def epoch_shared(
    ws: np.ndarray,
    W: np.ndarray,
    Z: np.ndarray,
    Y: np.ndarray,
    S: np.ndarray,
    Xd: np.ndarray,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    sparse: bool,
    Lmat: np.ndarray,
    loss: int,
    inv_n: float,
    a1: float,
    a2: float,
    pen: int,
) -> None:
    """One pass over the features ``ws`` for the shared design X (n, p), Z and Y (n, T)."""
    n, T = Z.shape
    g = np.empty(T)
    d = np.empty(T)
    delta = np.empty(T)
    for jj in range(ws.shape[0]):
        j = ws[jj]
        for t in range(T):
            g[t] = 0.0
        if sparse:
            for k in range(Xptr[j], Xptr[j + 1]):
                i = Xind[k]
                x = Xdata[k]
                _dloss_row(i, Z, Y, S, loss, inv_n, d)
                for t in range(T):
                    g[t] += x * d[t]
        else:
            for i in range(n):
                x = Xd[i, j]
                if x != 0.0:
                    _dloss_row(i, Z, Y, S, loss, inv_n, d)
                    for t in range(T):
                        g[t] += x * d[t]
        if _prox_row(W, j, g, Lmat[j], a1, a2, pen, delta):
            _add_column(Z, Xd, j, Xdata, Xind, Xptr, j, sparse, delta)


@njit(cache=True)
def epoch_per_task(
    ws: np.ndarray,
    W: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    task: np.ndarray,
    Xd: np.ndarray,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    sparse: bool,
    Lmat: np.ndarray,
    loss: int,
    inv_n: float,
    a1: float,
    a2: float,
    pen: int,
) -> None:
    """One pass for per-task designs: rows of X (N, p) belong to task ``task[i]``; z, y (N,)."""
    N = z.shape[0]
    T = W.shape[1]
    g = np.empty(T)
    delta = np.empty(T)
    for jj in range(ws.shape[0]):
        j = ws[jj]
        for t in range(T):
            g[t] = 0.0
        if sparse:
            for k in range(Xptr[j], Xptr[j + 1]):
                i = Xind[k]
                g[task[i]] += Xdata[k] * _dloss_scalar(z[i], y[i], s[i] * inv_n, loss)
        else:
            for i in range(N):
                x = Xd[i, j]
                if x != 0.0:
                    g[task[i]] += x * _dloss_scalar(z[i], y[i], s[i] * inv_n, loss)
        if _prox_row(W, j, g, Lmat[j], a1, a2, pen, delta):
            _add_column_per_task(z, task, Xd, j, Xdata, Xind, Xptr, j, sparse, delta)


@njit(cache=True)
def intercept_step_shared(
    b: np.ndarray,
    Z: np.ndarray,
    Y: np.ndarray,
    S: np.ndarray,
    loss: int,
    inv_n: float,
    Lb: np.ndarray,
) -> None:
    """b ← b − ∇_b f / Lb (exact for the quadratic loss), Z updated."""
    n, T = Z.shape
    g = np.zeros(T)
    d = np.empty(T)
    for i in range(n):
        _dloss_row(i, Z, Y, S, loss, inv_n, d)
        for t in range(T):
            g[t] += d[t]
    for t in range(T):
        g[t] = -g[t] / Lb[t]
        b[t] += g[t]
    for i in range(n):
        for t in range(T):
            Z[i, t] += g[t]


@njit(cache=True)
def intercept_step_per_task(
    b: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    task: np.ndarray,
    loss: int,
    inv_n: float,
    Lb: np.ndarray,
) -> None:
    N = z.shape[0]
    T = b.shape[0]
    g = np.zeros(T)
    for i in range(N):
        g[task[i]] += _dloss_scalar(z[i], y[i], s[i] * inv_n, loss)
    for t in range(T):
        g[t] = -g[t] / Lb[t] if Lb[t] > 0 else 0.0
        b[t] += g[t]
    for i in range(N):
        z[i] += g[task[i]]


@njit(cache=True)
def epoch_gram(
    W: np.ndarray, Q: np.ndarray, G: np.ndarray, Lmat: np.ndarray, a1: float, a2: float, pen: int
) -> None:
    """One pass over the rows of W (m, T) for the quadratic loss on a shared design, through the
    Gram matrix: Q = ∇_W f = Xᵀ diag(s/n̄)(XW − Y) and G = Xᵀ diag(s/n̄) X (m, m) of the working
    set; after row j moves by δ, Q_k += G_kj δ for every k (m·T work instead of n·T).
    """
    m, T = W.shape
    delta = np.empty(T)
    for j in range(m):
        if _prox_row(W, j, Q[j], Lmat[j], a1, a2, pen, delta):
            for k in range(m):
                gkj = G[k, j]
                if gkj != 0.0:
                    for t in range(T):
                        Q[k, t] += gkj * delta[t]


@njit(cache=True)
def model_epoch_shared(
    ws: np.ndarray,
    W: np.ndarray,
    dZ: np.ndarray,
    G: np.ndarray,
    D: np.ndarray,
    Xd: np.ndarray,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    sparse: bool,
    Lm: np.ndarray,
    a1: float,
    a2: float,
    pen: int,
) -> None:
    """One BCD pass over ``ws`` on the quadratic model of the loss around Z₀ (shared design):
    q(ΔZ) = Σ G∘ΔZ + ½ Σ D∘ΔZ², whose gradient is G + D∘ΔZ; ``Lm[j, t] = Σ_i D_it x_ij²`` the
    exact coordinate curvatures (the block step uses max_t for the l21 penalty). ΔZ updated.
    """
    n, T = dZ.shape
    g = np.empty(T)
    delta = np.empty(T)
    for jj in range(ws.shape[0]):
        j = ws[jj]
        for t in range(T):
            g[t] = 0.0
        if sparse:
            for k in range(Xptr[j], Xptr[j + 1]):
                i = Xind[k]
                x = Xdata[k]
                for t in range(T):
                    g[t] += x * (G[i, t] + D[i, t] * dZ[i, t])
        else:
            for i in range(n):
                x = Xd[i, jj]
                if x != 0.0:
                    for t in range(T):
                        g[t] += x * (G[i, t] + D[i, t] * dZ[i, t])
        row = jj if not sparse else j
        if _prox_row(W, row, g, Lm[jj], a1, a2, pen, delta):
            _add_column(dZ, Xd, jj, Xdata, Xind, Xptr, j, sparse, delta)


@njit(cache=True)
def model_epoch_per_task(
    ws: np.ndarray,
    W: np.ndarray,
    dz: np.ndarray,
    G: np.ndarray,
    D: np.ndarray,
    task: np.ndarray,
    Xd: np.ndarray,
    Xdata: np.ndarray,
    Xind: np.ndarray,
    Xptr: np.ndarray,
    sparse: bool,
    Lm: np.ndarray,
    a1: float,
    a2: float,
    pen: int,
) -> None:
    """:func:`model_epoch_shared` for per-task designs (dz, G, D of shape (N,))."""
    N = dz.shape[0]
    T = W.shape[1]
    g = np.empty(T)
    delta = np.empty(T)
    for jj in range(ws.shape[0]):
        j = ws[jj]
        for t in range(T):
            g[t] = 0.0
        if sparse:
            for k in range(Xptr[j], Xptr[j + 1]):
                i = Xind[k]
                g[task[i]] += Xdata[k] * (G[i] + D[i] * dz[i])
        else:
            for i in range(N):
                x = Xd[i, jj]
                if x != 0.0:
                    g[task[i]] += x * (G[i] + D[i] * dz[i])
        row = jj if not sparse else j
        if _prox_row(W, row, g, Lm[jj], a1, a2, pen, delta):
            _add_column_per_task(dz, task, Xd, jj, Xdata, Xind, Xptr, j, sparse, delta)
