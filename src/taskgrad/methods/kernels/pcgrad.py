"""PCGrad's sequential projections for given task orders, compiled."""

from __future__ import annotations

import numpy as np

from .common import _ENTRY, _INTERNAL, njit  # noqa: F401


@njit(**_ENTRY)
def pcgrad(G, perms):
    """PCGrad weights for G (B, k, k) and task orders perms (B, k, k): row i of problem b visits
    j = perms[b, i, p] for p = 0..k−1 and, when ⟨gᵢᴾᶜ, gⱼ⟩ < 0 (j ≠ i, gⱼ ≠ 0), subtracts the
    projection; gᵢᴾᶜ = Σⱼ Cᵢⱼgⱼ and w = 1ᵀC.
    """
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
