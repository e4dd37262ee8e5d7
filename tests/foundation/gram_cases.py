"""Random and adversarial Jacobians for solver tests (rows are task gradients)."""

from __future__ import annotations

import numpy as np
import torch


def jacobian(kind: str, k: int, P: int, seed: int = 0) -> torch.Tensor:
    """A (k, P) float64 Jacobian of the named kind."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((k, P))
    if kind == "random":
        pass
    elif kind == "conflicting":  # auxiliaries pointing against the primary
        J[1:] -= 1.5 * J[:1] * rng.uniform(0.2, 1.0, size=(k - 1, 1))
    elif kind == "rank_deficient":  # rank 3 whatever k
        J = rng.standard_normal((k, 3)) @ rng.standard_normal((3, P))
    elif kind == "rank_half":  # rank k/2, conflicting: wide active sets on a singular Gram
        J = rng.standard_normal((k, max(1, k // 2))) @ rng.standard_normal((max(1, k // 2), P))
        J[1:] -= 0.5 * J[:1]
    elif kind == "duplicated":
        J[k // 2 :] = J[: k - k // 2]
    elif kind == "opposite":
        half = k // 2
        J[1 + half :] = -J[1 : 1 + (k - 1 - half)]
    elif kind == "zero":
        J[1::3] = 0.0
    elif kind == "scales":  # per-task norms from 1e-20 to 1e20
        J *= np.logspace(-20, 20, k)[:, None]
    elif kind == "near_parallel":
        base = rng.standard_normal(P)
        J = base[None, :] + 1e-6 * J
        J[0] = -J[0] + 0.1 * rng.standard_normal(P)
    else:
        raise ValueError(kind)
    return torch.from_numpy(J)


KINDS = ["random", "conflicting", "rank_deficient", "rank_half", "duplicated", "opposite", "zero", "near_parallel"]


def gram(J: torch.Tensor) -> torch.Tensor:
    G = J @ J.T
    return 0.5 * (G + G.T)
