"""The α-fair Newton solve of Nash-MTL and FairGrad, compiled (the scale-free form of
:mod:`taskgrad.methods.gram._alpha_fair`: Ĝy = c ⊙ y^(−1/α) on the cosine matrix).
"""

from __future__ import annotations

import math

import numpy as np

from .common import _ENTRY, _INTERNAL, EPS, TINY, _cho_solve, _cholesky, njit, xGx

# statuses, as in taskgrad.methods.gram._alpha_fair
CONVERGED, UNDEFINED, NOT_CONVERGED = 0, 1, 2
LIMITED = 3  # stopped at the rounding level of (Ĝy)ᵢ above rtol: the caller checks the hull


@njit(**_INTERNAL)
def _fair_objective(Gs, c, x, a, xn, clamp):
    """½xᵀĜx + Σcᵢh(xᵢ) (at max(x, tiny) when ``clamp``), h = −log (a = 1) or −t^e/e,
    e = (a − 1)/a.
    """
    k = x.shape[0]
    for i in range(k):
        xn[i] = max(x[i], TINY) if clamp else x[i]
    quad = xGx(xn, Gs)
    h = 0.0
    if a == 1.0:
        for i in range(k):
            h -= c[i] * math.log(xn[i])
    else:
        e = (a - 1.0) / a
        for i in range(k):
            h -= c[i] * xn[i] ** e / e
    return 0.5 * quad + h


@njit(**_ENTRY)
def alpha_fair(G, alpha, max_iter):
    """α-fair weights w > 0 with (Gw)ᵢ = wᵢ^(−1/α) for each G[b] (B, k, k), by the damped Newton
    iteration of :func:`taskgrad.methods.gram._alpha_fair.alpha_fair_solve` (same start, steps,
    line search and stopping rule, float64). Returns (W (B, k), status (B,)): CONVERGED,
    UNDEFINED (a zero gradient) or NOT_CONVERGED (the caller decides whether 0 is in the hull).
    """
    B, k = G.shape[0], G.shape[-1]
    W = np.zeros((B, k))
    status = np.zeros(B, dtype=np.int64)
    Gs = np.empty((k, k))
    H = np.empty((k, k))
    L = np.zeros((k, k))
    x = np.empty(k)
    c = np.empty(k)
    inv = np.empty(k)
    gx = np.empty(k)
    grad = np.empty(k)
    step = np.empty(k)
    xn = np.empty(k)
    xc = np.empty(k)
    inv_a = 1.0 / alpha
    pw = alpha / (alpha + 1.0)
    rtol = 1e-12
    for b in range(B):
        zero = False
        for i in range(k):
            sig = math.sqrt(max(G[b, i, i], 0.0))
            if sig > 0.0:
                inv[i] = 1.0 / sig
                c[i] = sig ** (inv_a - 1.0)
            else:
                inv[i] = 0.0
                c[i] = 1.0
                zero = True
        for i in range(k):
            for j in range(k):
                if inv[i] == 0.0 or inv[j] == 0.0:
                    Gs[i, j] = 1.0 if i == j else 0.0
                else:
                    Gs[i, j] = 0.5 * (G[b, i, j] + G[b, j, i]) * inv[i] * inv[j]
        for i in range(k):
            x[i] = c[i] ** pw
        num = 0.0
        for i in range(k):
            num += c[i] * x[i] ** (1.0 - inv_a)
        t0 = (num / max(xGx(x, Gs), TINY)) ** pw
        for i in range(k):
            x[i] = x[i] * t0
        converged = False
        limited = False
        for _ in range(max_iter):
            finite = True
            for i in range(k):
                t = 0.0
                for j in range(k):
                    t += Gs[i, j] * x[j]
                gx[i] = t
                grad[i] = t - c[i] * x[i] ** (-inv_a)
                if not math.isfinite(x[i]):
                    finite = False
            for i in range(k):
                for j in range(k):
                    H[i, j] = Gs[i, j]
                H[i, i] += inv_a * c[i] * x[i] ** (-inv_a - 1.0) + 1e-300
            info = _cholesky(H, k, L)
            if info != 0:  # the iteration cannot continue (the torch path stalls here too)
                break
            _cho_solve(L, k, grad, step)
            dec = 0.0
            resid = 0.0
            floor = 0.0
            for i in range(k):
                step[i] = -step[i]
                dec -= grad[i] * step[i]
                rr = abs(gx[i] * x[i] ** inv_a / c[i] - 1.0)
                if rr > resid or math.isnan(rr):
                    resid = rr
                ab = 0.0
                for j in range(k):
                    ab += abs(Gs[i, j]) * abs(x[j])
                floor = max(floor, (8.0 * k * EPS) * ab / max(abs(gx[i]), TINY))
            if (dec <= 1e-32 or resid <= rtol) and finite:
                converged = True
                break
            if resid <= floor and finite:
                converged = True
                limited = True
                break
            ratio = np.inf
            for i in range(k):
                if step[i] < 0.0:
                    ratio = min(ratio, -x[i] / step[i])
            tstep = min(0.99 * ratio, 1.0)
            f0 = _fair_objective(Gs, c, x, alpha, xn, False)
            for _ls in range(60):
                for i in range(k):
                    xc[i] = x[i] + tstep * step[i]
                fn = _fair_objective(Gs, c, xc, alpha, xn, True)
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
        allfinite = True
        for i in range(k):
            W[b, i] = x[i] * inv[i]
            if not math.isfinite(x[i]):
                allfinite = False
        if zero:
            status[b] = UNDEFINED
        elif not (converged and allfinite):
            status[b] = NOT_CONVERGED
        elif limited:
            status[b] = LIMITED
    return W, status
