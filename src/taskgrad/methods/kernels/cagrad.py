"""CAGrad's exact parametric root search, compiled."""

from __future__ import annotations

import math

import numpy as np

from .common import (
    _ENTRY,
    _INTERNAL,
    EPS,
    NNLS_RIDGE,
    OK,
    TINY,
    _cho_solve,
    _cholesky,
    _min_norm_one,
    njit,
    quad,
)


@njit(**_INTERNAL)
def _shifted(G, bvec, g0sq, rho, out):
    """G + ρ(b1ᵀ + 1bᵀ) + ρ²‖g₀‖²11ᵀ: the Gram matrix of the shifted gradients gᵢ + ρg₀."""
    k = G.shape[0]
    for i in range(k):
        for j in range(k):
            out[i, j] = G[i, j] + rho * (bvec[i] + bvec[j]) + (rho * rho) * g0sq


@njit(**_INTERNAL)
def _affine_path_roots(G, bvec, w, r):
    """On the active set F of w, w(ρ) = a + ρc minimizes ½wᵀGw + ρbᵀw over 1ᵀw = 1 (w_F free);
    with H = G_FF/s + 11ᵀ, u = H⁻¹1 and v = H⁻¹b_F/s: a = u/1ᵀu, c = (1ᵀv/1ᵀu)u − v. Returns
    the two positive roots of ‖Jᵀw(ρ)‖² = r²ρ² (NaN where there is none).
    """
    k = G.shape[0]
    idx = np.empty(k, dtype=np.int64)
    n = 0
    smax = TINY
    for i in range(k):
        smax = max(smax, G[i, i])
        if w[i] > 0.0:
            idx[n] = i
            n += 1
    nan = np.nan
    if n == 0:
        return nan, nan
    H = np.empty((n, n))
    L = np.zeros((n, n))
    for p in range(n):
        for q in range(n):
            H[p, q] = G[idx[p], idx[q]] / smax + 1.0
        H[p, p] += NNLS_RIDGE
    info = _cholesky(H, n, L)
    bump = NNLS_RIDGE
    while info != 0:
        bump *= 100.0
        if bump > 1e-2:
            return nan, nan
        for p in range(n):
            H[p, p] += bump
        info = _cholesky(H, n, L)
    u = np.ones(n)
    v = np.empty(n)
    for p in range(n):
        v[p] = bvec[idx[p]] / smax
    _cho_solve(L, n, u, u)
    _cho_solve(L, n, v, v)
    su = 0.0
    sv = 0.0
    for p in range(n):
        su += u[p]
        sv += v[p]
    if not abs(su) > 0.0:
        return nan, nan
    a = np.zeros(k)
    cc = np.zeros(k)
    for p in range(n):
        a[idx[p]] = u[p] / su
        cc[idx[p]] = (sv / su) * u[p] - v[p]
    A2 = 0.0
    A1 = 0.0
    A0 = 0.0
    for i in range(k):
        ga = 0.0
        gc = 0.0
        for j in range(k):
            ga += G[i, j] * a[j]
            gc += G[i, j] * cc[j]
        A2 += cc[i] * gc
        A1 += a[i] * gc
        A0 += a[i] * ga
    A2 -= r * r
    disc = A1 * A1 - A2 * A0
    if not disc >= 0.0:
        return nan, nan
    sq = math.sqrt(disc)
    qq = -(A1 + (sq if A1 >= 0.0 else -sq))
    # roots of A2 ρ² + 2 A1 ρ + A0 = 0, written stably
    r1 = qq / A2 if A2 != 0.0 else nan
    r2 = A0 / qq if qq != 0.0 else nan
    if not (r1 > 0.0 and math.isfinite(r1)):
        r1 = nan
    if not (r2 > 0.0 and math.isfinite(r2)):
        r2 = nan
    return r1, r2


# status codes besides OK / NOT_PD: 0 in the hull (the caller solves those), root search not done
DEGENERATE = 2
NOT_CONVERGED = 3


@njit(**_ENTRY)
def cagrad(G, c, norm_eps, max_iter, mn_max_iter, deg_tol):
    """CAGrad weights for each G[b] (B, k, k): the root ρ* of ‖g_w(ρ)‖ = rρ with w(ρ) the exact
    min-norm point of the shifted hull, by the safeguarded search of
    :func:`taskgrad.methods.gram.cagrad.cagrad_weights`; w = 1/k + w(ρ*)/ρ*.
    Returns (W (B, k), status (B,)): OK, NOT_PD, DEGENERATE (the min-norm point of the hull is
    below ``deg_tol``·maxᵢ‖gᵢ‖: 0 in the hull, solved by the caller) or NOT_CONVERGED (the root
    search used ``max_iter`` steps).
    """
    B, k = G.shape[0], G.shape[-1]
    W = np.empty((B, k))
    status = np.zeros(B, dtype=np.int64)
    bvec = np.empty(k)
    Gsh = np.empty((k, k))
    w0 = np.empty(k)
    w = np.empty(k)
    w_new = np.empty(k)
    tol = 64.0 * EPS
    for bb in range(B):
        Gb = G[bb]
        uni = 1.0 / k
        if c == 0.0 or k == 1:
            for i in range(k):
                W[bb, i] = uni
            continue
        tot = 0.0
        trace = 0.0
        dmax = -np.inf
        for i in range(k):
            t = 0.0
            for j in range(k):
                t += Gb[i, j]
            bvec[i] = t / k
            tot += bvec[i]
            trace += Gb[i, i]
            dmax = max(dmax, Gb[i, i])
        g0sq = max(tot / k, 0.0)
        r = c * math.sqrt(g0sq)
        st = _min_norm_one(Gb, mn_max_iter, w0)
        f_lo = math.sqrt(quad(w0, Gb))
        smax = math.sqrt(max(dmax, 0.0))
        if st != OK:
            status[bb] = st
            continue
        if r <= 0.0:
            for i in range(k):
                W[bb, i] = uni
            continue
        if norm_eps > 0.0 and f_lo <= norm_eps * math.sqrt(max(trace, 0.0)):
            for i in range(k):
                W[bb, i] = 0.0
            continue
        if f_lo <= deg_tol * smax:
            status[bb] = DEGENERATE
            continue
        lo = 0.0
        hi = 2.0 * smax / r
        _shifted(Gb, bvec, g0sq, hi, Gsh)
        st = _min_norm_one(Gsh, mn_max_iter, w)
        f_hi = math.sqrt(quad(w, Gb)) - r * hi
        rho = hi
        f = f_hi
        side = 0
        cand_src = w0.copy()
        conv = False
        for _ in range(max_iter):
            if st != OK:
                break
            c1, c2 = _affine_path_roots(Gb, bvec, cand_src, r)
            in1 = c1 > lo and c1 < hi
            in2 = c2 > lo and c2 < hi
            use = in1 or in2
            if use:
                new = c1 if in1 else c2
            else:
                new = (lo * (-f_hi) + hi * f_lo) / max(f_lo - f_hi, TINY)
            _shifted(Gb, bvec, g0sq, new, Gsh)
            st = _min_norm_one(Gsh, mn_max_iter, w_new)
            f_new = math.sqrt(quad(w_new, Gb)) - r * new
            rho = new
            for i in range(k):
                w[i] = w_new[i]
            f = f_new
            right = f < 0.0
            left = f >= 0.0
            if right:
                hi = rho
                f_hi = f
            if left:
                lo = rho
                f_lo = f
            # Illinois: halve the stale end's value when the same side moves twice
            if right and side == 1 and not use:
                f_lo = 0.5 * f_lo
            if left and side == -1 and not use:
                f_hi = 0.5 * f_hi
            if right:
                side = 1
            elif left:
                side = -1
            for i in range(k):
                cand_src[i] = w[i]
            if abs(f) <= 1e-12 * r * rho + tol * smax or hi - lo <= tol * hi:
                conv = True
                break
        status[bb] = st if (st != OK or conv) else NOT_CONVERGED
        for i in range(k):
            W[bb, i] = uni + w[i] / rho
    return W, status
