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


KINDS = [
    "random",
    "conflicting",
    "rank_deficient",
    "rank_half",
    "duplicated",
    "opposite",
    "zero",
    "near_parallel",
]


def gram(J: torch.Tensor) -> torch.Tensor:
    G = J @ J.T
    return 0.5 * (G + G.T)


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies with mixed task scales, and the KKT oracle of the original problem.
#
# Stable names for other test modules: ``scaled_jacobians``, ``mixed_scale_grams``,
# ``kkt_residual_reference``, ``FLOAT32_SAFE_LOG10`` and ``FLOAT64_LOG10``.

from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

FLOAT32_SAFE_LOG10 = 8  # task norms in 1e-8..1e8: squared norms stay normal float32 numbers
FLOAT64_LOG10 = 20  # task norms in 1e-20..1e20 (squared norms 1e-40..1e40)

_unit = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def scaled_jacobians(
    draw, min_k: int = 2, max_k: int = 6, max_log10: float = FLOAT64_LOG10, structured: bool = True
) -> torch.Tensor:
    """A (k, P) float64 Jacobian whose rows (task gradients) have norms 10**u, u uniform in
    [-max_log10, max_log10] (drawn per task), with entries of each row in [-1, 1] before scaling.

    With ``structured``, some rows are exact copies, exact negatives (opposite gradients, also
    at a different scale: parallel but not equal) or zero rows, which make G singular in the
    ways that matter (0 in the convex hull, duplicated tasks, zero gradients).
    """
    k = draw(st.integers(min_k, max_k))
    P = draw(st.integers(1, 6))
    J = draw(arrays(np.float64, (k, P), elements=_unit))
    J = J.copy()
    if structured and k >= 2:
        for _ in range(draw(st.integers(0, 2))):
            i, j = draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))
            kind = draw(st.sampled_from(["duplicate", "opposite", "zero"]))
            if kind == "duplicate":
                J[j] = J[i]
            elif kind == "opposite":
                J[j] = -J[i]
            else:
                J[j] = 0.0
    logs = draw(
        arrays(np.float64, (k,), elements=st.floats(-max_log10, max_log10, allow_nan=False))
    )
    J = J * (10.0**logs)[:, None]
    return torch.from_numpy(J)


def mixed_scale_grams(
    min_k: int = 2, max_k: int = 6, max_log10: float = FLOAT64_LOG10, structured: bool = True
):
    """Strategy of (J, G) pairs: :func:`scaled_jacobians` and its symmetrized Gram (float64)."""
    return scaled_jacobians(min_k, max_k, max_log10, structured).map(lambda J: (J, gram(J)))


def kkt_residual_reference(w: torch.Tensor, G: torch.Tensor, n: int = 1, eps: float = 0.0) -> float:
    """KKT residual of the ORIGINAL (mixed) primary/aux problem for one (k, k) Gram, written
    independently of taskgrad in NumPy extended precision (np.longdouble).

    The problem: w[:n] in the simplex (n = 1: w₀ = 1) and w[n:] ≥ 0 minimizing ‖Jᵀw‖², u = Jᵀw.
    Its KKT conditions: ⟨u, gᵢ⟩ ≥ 0 for auxiliaries and, for n > 1, ⟨u, gⱼ⟩ ≥ ‖u‖² for
    primaries, each with complementarity. Every constraint is measured in its own units, the
    bound on its terms: with σᵢ = ‖gᵢ‖ and V = Σ|wᵢ|σᵢ, an auxiliary's
    |min(wᵢσᵢ/V, ⟨u, gᵢ⟩/(σᵢV))| and a primary's |min(wⱼσⱼ/V, (⟨u, gⱼ⟩ − ‖u‖²)/((σⱼ + V)V))|.
    Zero gradients count as exactly zero (their rows of G dropped, their constraints exempt):
    auxiliaries with ‖gᵢ‖² ≤ eps·max‖g‖² and any task with ‖gᵢ‖² below the smallest normal
    number of w's dtype. Also asserts the sign and sum constraints.
    """
    Gl = G.detach().cpu().double().numpy().astype(np.longdouble)
    wl = w.detach().cpu().double().numpy().astype(np.longdouble)
    assert (wl >= 0).all(), f"negative weight in {wl}"
    total = wl[:n].sum()
    if n == 1:
        assert abs(float(wl[0]) - 1.0) < 1e-12 or float(np.abs(wl).sum()) == 0.0
    else:
        tol = 1e-9 if w.dtype == torch.float64 else 10 * len(wl) * torch.finfo(w.dtype).eps
        assert abs(float(total) - 1.0) < tol, f"primary weights sum to {float(total)}"
    if total > 0:
        wl = wl / total
    diag = np.clip(np.diagonal(Gl), 0, None)
    # a squared norm below the smallest normal number of the answer's dtype is a zero gradient
    # (float32 answers: float32's, as the solvers treat a float32 Gram)
    tiny = torch.finfo(w.dtype).tiny if w.dtype.is_floating_point else np.finfo(np.float64).tiny
    live = (diag > eps * diag.max()) & (diag >= tiny)
    live[:n] = diag[:n] >= tiny if n > 1 else True  # the projection's g0 is used as given
    Gl = Gl * np.outer(live, live)
    diag = diag * live
    sig = np.sqrt(diag)
    V = float((np.abs(wl) * sig).sum()) or 1.0
    Gu = Gl @ wl
    uu = wl @ Gu
    res = 0.0
    for i in range(len(wl)):
        if not live[i] or (i < n and n == 1):
            continue
        if i < n:
            slack = (Gu[i] - uu) / ((sig[i] + V) * V)
        else:
            slack = Gu[i] / (sig[i] * V)
        res = max(res, abs(float(min(wl[i] * sig[i] / V, slack))))
    return res
