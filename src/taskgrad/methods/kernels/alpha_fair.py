"""The α-fair Newton solve of Nash-MTL and FairGrad, compiled."""

from __future__ import annotations

import math

import numpy as np

from .common import _ENTRY, _INTERNAL, TINY, _cho_solve, _cholesky, njit, xGx


@njit(**_INTERNAL)
def _fair_objective(Gs, x, a, xn, clamp):
    """½xᵀGx + Σh(xᵢ) (at max(x, tiny) when ``clamp``), h = −log (a = 1) or −t^e/e,
    e = (a − 1)/a."""
    k = x.shape[0]
    for i in range(k):
        xn[i] = max(x[i], TINY) if clamp else x[i]
    quad = xGx(xn, Gs)
    h = 0.0
    if a == 1.0:
        for i in range(k):
            h -= math.log(xn[i])
    else:
        e = (a - 1.0) / a
        for i in range(k):
            h -= xn[i] ** e / e
    return 0.5 * quad + h


@njit(**_ENTRY)
def alpha_fair(G, alpha, max_iter):
    """α-fair weights w > 0 with (Gw)ᵢ = wᵢ^(−1/α) for each G[b] (B, k, k), by the damped Newton
    iteration of :func:`taskgrad.methods.alpha_fair_weights` (same start, steps, line search
    and stopping rule, float64). Returns (W (B, k), ok (B,))."""
    B, k = G.shape[0], G.shape[-1]
    W = np.empty((B, k))
    OKs = np.zeros(B, dtype=np.bool_)
    Gs = np.empty((k, k))
    H = np.empty((k, k))
    L = np.zeros((k, k))
    x = np.empty(k)
    gx = np.empty(k)
    grad = np.empty(k)
    step = np.empty(k)
    xn = np.empty(k)
    xc = np.empty(k)
    inv_a = 1.0 / alpha
    pw = alpha / (alpha + 1.0)
    rtol = 1e-12
    for b in range(B):
        s = 0.0
        for i in range(k):
            s += G[b, i, i]
        s /= k
        ok = s > 0.0
        for i in range(k):
            if not G[b, i, i] > 1e-14 * s:
                ok = False
        s_safe = s if ok else 1.0
        for i in range(k):
            for j in range(k):
                Gs[i, j] = G[b, i, j] / s_safe if ok else (1.0 if i == j else 0.0)
        for i in range(k):
            x[i] = Gs[i, i] ** (-pw)
        t0 = (k / max(xGx(x, Gs), TINY)) ** pw
        for i in range(k):
            x[i] = x[i] * t0
        converged = False
        for _ in range(max_iter):
            finite = True
            for i in range(k):
                t = 0.0
                for j in range(k):
                    t += Gs[i, j] * x[j]
                gx[i] = t
                grad[i] = t - x[i] ** (-inv_a)
                if not math.isfinite(x[i]):
                    finite = False
            for i in range(k):
                for j in range(k):
                    H[i, j] = Gs[i, j]
                H[i, i] += inv_a * x[i] ** (-inv_a - 1.0) + 1e-300
            info = _cholesky(H, k, L)
            if info != 0:  # the iteration cannot continue (the torch path stalls here too)
                break
            _cho_solve(L, k, grad, step)
            dec = 0.0
            resid = 0.0
            for i in range(k):
                step[i] = -step[i]
                dec -= grad[i] * step[i]
                rr = abs(gx[i] * x[i] ** inv_a - 1.0)
                if rr > resid or rr != rr:
                    resid = rr
            if (dec <= 1e-24 or resid <= rtol) and finite:
                converged = True
                break
            ratio = np.inf
            for i in range(k):
                if step[i] < 0.0:
                    t = -x[i] / step[i]
                    ratio = min(ratio, t)
            tstep = min(0.99 * ratio, 1.0)
            f0 = _fair_objective(Gs, x, alpha, xn, False)
            for _ls in range(60):
                for i in range(k):
                    xc[i] = x[i] + tstep * step[i]
                fn = _fair_objective(Gs, xc, alpha, xn, True)
                if fn <= f0 - 1e-4 * tstep * dec or dec <= 1e-8:
                    for i in range(k):
                        x[i] = xc[i]
                    break
                tstep = 0.5 * tstep
            finite = True
            for i in range(k):
                if not math.isfinite(x[i]):
                    finite = False
            if not finite:
                break
        scale = s_safe ** (-pw)
        allfinite = True
        for i in range(k):
            W[b, i] = x[i] * scale
            if not math.isfinite(x[i]):
                allfinite = False
        OKs[b] = ok and converged and allfinite
    return W, OKs
