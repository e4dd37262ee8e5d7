"""Compiled (numba) kernels for the Gram-based methods, one problem at a time on the host.

At k ≈ 40 a method built from batched torch operators pays per operator (~5–20 µs each, k to
100 of them per solve); the same arithmetic written as loops and compiled costs a few µs per
problem. Every kernel here is a line-by-line port of the torch/NumPy path it replaces, with the
same tolerances and the same decisions (active sets, stopping rules), so the two agree to
rounding; the tests in ``tests/methods/test_methods_kernels.py`` compare them.

Compilation: ``njit(cache=True)``; the first call after an install or an edit of this file
compiles what it uses (a few seconds per kernel, ~20 s for CAGrad, which pulls in the whole
NNLS port), later processes load the machine code from ``__pycache__``.

Layout: all arrays are float64 C-contiguous NumPy arrays; batched kernels take (B, k, k) Gram
matrices and loop over B. Errors are returned as status codes (numba cannot raise the library's
exception types); the Python wrappers in :mod:`taskgrad.methods.aggregators` turn them into
clear exceptions.

Contents:

* from :mod:`taskgrad.solvers._compiled` (re-exported): a Cholesky factorization with a ridge
  bump and its triangular solves, the non-negative QP (block principal
  pivoting with a Lawson–Hanson fallback, a port of :mod:`taskgrad.solvers._single`) and the
  min-norm point of a convex hull (MGDA) on top of it;
* PCGrad's and GradVac's sequential projections for given task orders;
* the α-fair Newton solve of Nash-MTL/FairGrad;
* CAGrad's exact parametric root search.
"""

from __future__ import annotations

import math

import numpy as np

from ..solvers._compiled import (  # the NNLS port, its entry points and the compile options
    EPS,
    HAVE_NUMBA,
    NNLS_RIDGE,
    NOT_PD,
    OK,
    TINY,
    _ENTRY,
    _INTERNAL,
    _cho_solve,
    _cholesky,
    _min_norm_one,
    min_norm,
    njit,
    nnls_rows,
)

__all__ = ["HAVE_NUMBA", "NOT_PD", "OK", "alpha_fair", "cagrad", "gradvac", "min_norm", "nnls_rows", "pcgrad"]


# --------------------------------------------------------------------------------------------
# PCGrad and GradVac


@njit(**_ENTRY)
def pcgrad(G, perms):
    """PCGrad weights for G (B, k, k) and task orders perms (B, k, k): row i of problem b visits
    j = perms[b, i, p] for p = 0..k−1 and, when ⟨gᵢᴾᶜ, gⱼ⟩ < 0 (j ≠ i, gⱼ ≠ 0), subtracts the
    projection; gᵢᴾᶜ = Σⱼ Cᵢⱼgⱼ and w = 1ᵀC."""
    B, k = G.shape[0], G.shape[-1]
    W = np.zeros((B, k))
    crow = np.empty(k)
    for b in range(B):
        for i in range(k):
            for q in range(k):
                crow[q] = 0.0
            crow[i] = 1.0
            for p in range(k):
                j = perms[b, i, p]
                inner = 0.0
                for q in range(k):
                    inner += crow[q] * G[b, j, q]
                gjj = G[b, j, j]
                if j != i and inner < 0.0 and gjj > 0.0:
                    crow[j] += -inner / gjj
            for q in range(k):
                W[b, q] += crow[q]
    return W


@njit(**_ENTRY)
def gradvac(G, perms, phi_hat, beta, eps):
    """GradVac weights for G (B, k, k); perms (B, k, k − 1) index the other tasks of each row
    (row i visits the perms[b, i, p]-th of [j ≠ i] in turn); phi_hat (B, k, k) is the EMA of the
    target similarities, updated in place. Same arithmetic as the torch path of GradVac."""
    B, k = G.shape[0], G.shape[-1]
    W = np.zeros((B, k))
    crow = np.empty(k)
    cg = np.empty(k)
    norms = np.empty(k)
    for b in range(B):
        for q in range(k):
            norms[q] = math.sqrt(max(G[b, q, q], 0.0))
        for i in range(k):
            for q in range(k):
                crow[q] = 0.0
                cg[q] = G[b, i, q]
            crow[i] = 1.0
            for p in range(k - 1):
                j = perms[b, i, p]
                if j >= i:
                    j += 1
                dot = cg[j]
                t = 0.0
                for q in range(k):
                    t += cg[q] * crow[q]
                norm_i = math.sqrt(max(t, 0.0))
                norm_j = norms[j]
                phi = dot / (norm_i * norm_j + eps)
                ph = phi_hat[b, i, j]
                s_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                s_hat = math.sqrt(max(1.0 - ph * ph, 0.0))
                if phi < ph:
                    wt = norm_i * (ph * s_phi - phi * s_hat) / (norm_j * s_hat + eps)
                    crow[j] += wt
                    for q in range(k):
                        cg[q] += wt * G[b, j, q]
                phi_hat[b, i, j] = (1.0 - beta) * ph + beta * phi
            for q in range(k):
                W[b, q] += crow[q]
    return W


# --------------------------------------------------------------------------------------------
# α-fair weights (Nash-MTL, FairGrad)


@njit(**_INTERNAL)
def _xGx(x, G):
    """xᵀGx."""
    k = x.shape[0]
    q = 0.0
    for i in range(k):
        t = 0.0
        for j in range(k):
            t += G[i, j] * x[j]
        q += x[i] * t
    return q


@njit(**_INTERNAL)
def _quad(w, G):
    """max(wᵀGw, 0): ‖Jᵀw‖² with the rounding below zero removed."""
    return max(_xGx(w, G), 0.0)


@njit(**_INTERNAL)
def _fair_objective(Gs, x, a, xn, clamp):
    """½xᵀGx + Σh(xᵢ) (at max(x, tiny) when ``clamp``), h = −log (a = 1) or −t^e/e,
    e = (a − 1)/a."""
    k = x.shape[0]
    for i in range(k):
        xn[i] = max(x[i], TINY) if clamp else x[i]
    quad = _xGx(xn, Gs)
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
        t0 = (k / max(_xGx(x, Gs), TINY)) ** pw
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
                    if t < ratio:
                        ratio = t
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


# --------------------------------------------------------------------------------------------
# CAGrad


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
    the two positive roots of ‖Jᵀw(ρ)‖² = r²ρ² (NaN where there is none)."""
    k = G.shape[0]
    idx = np.empty(k, dtype=np.int64)
    n = 0
    smax = TINY
    for i in range(k):
        if G[i, i] > smax:
            smax = G[i, i]
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


@njit(**_ENTRY)
def cagrad(G, c, norm_eps, max_iter, mn_max_iter):
    """CAGrad weights for each G[b] (B, k, k): the root ρ* of ‖g_w(ρ)‖ = rρ with w(ρ) the exact
    min-norm point of the shifted hull, by the safeguarded search of
    :func:`taskgrad.methods.aggregators.cagrad_weights`; w = 1/k + w(ρ*)/ρ*.
    Returns (W (B, k), status (B,))."""
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
            if Gb[i, i] > dmax:
                dmax = Gb[i, i]
        g0sq = max(tot / k, 0.0)
        r = c * math.sqrt(g0sq)
        st = _min_norm_one(Gb, mn_max_iter, w0)
        f_lo = math.sqrt(_quad(w0, Gb))
        stationary = f_lo <= norm_eps * math.sqrt(max(trace, 0.0)) or r <= 0.0
        if st != OK:
            status[bb] = st
            continue
        if r <= 0.0:
            for i in range(k):
                W[bb, i] = uni
            continue
        if stationary:
            for i in range(k):
                W[bb, i] = 0.0
            continue
        smax = math.sqrt(max(dmax, 0.0))
        lo = 0.0
        hi = 2.0 * smax / r
        _shifted(Gb, bvec, g0sq, hi, Gsh)
        st = _min_norm_one(Gsh, mn_max_iter, w)
        f_hi = math.sqrt(_quad(w, Gb)) - r * hi
        rho = hi
        f = f_hi
        side = 0
        cand_src = w0.copy()
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
            f_new = math.sqrt(_quad(w_new, Gb)) - r * new
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
                break
        status[bb] = st
        for i in range(k):
            W[bb, i] = uni + w[i] / rho
    return W, status
