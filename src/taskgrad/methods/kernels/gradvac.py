"""GradVac's sequential projections for given task orders, compiled."""

from __future__ import annotations

import math

import numpy as np

from .common import _ENTRY, _INTERNAL, njit  # noqa: F401


@njit(**_ENTRY)
def gradvac(G, perms, phi_hat, beta, eps):
    """GradVac weights for G (B, k, k); perms (B, k, k − 1) index the other tasks of each row
    (row i visits the perms[b, i, p]-th of [j ≠ i] in turn); phi_hat (B, k, k) is the EMA of the
    target similarities, updated in place. Same arithmetic as the torch path of GradVac.
    """
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
