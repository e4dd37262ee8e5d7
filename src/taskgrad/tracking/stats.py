"""What a person reads about one step, computed from the Gram matrix G = J Jᵀ and the weights w.

* pairwise cosines cos(gᵢ, gⱼ) = Gᵢⱼ / √(Gᵢᵢ Gⱼⱼ) (a task with a zero gradient has no cosine: its
  pairs are left out and counted in ``zero_gradient_tasks``, never logged as NaN);
* the condition number κ(G) = λ_max / λ_min (G is symmetric positive semidefinite; κ = inf when
  λ_min ≤ 1e-12·λ_max, i.e. the task gradients are linearly dependent to working precision);
* the active constraints: the tasks whose first-order loss change along the update d = Jᵀw is
  zero, |⟨d, gᵢ⟩| = |(Gw)ᵢ| ≤ tol·‖d‖‖gᵢ‖ (‖d‖² = wᵀGw). These are the binding constraints
  ⟨d, gᵢ⟩ ≥ 0 of PrimaryAux (auxiliaries it stops from rising) and, for any method, the tasks
  left on the edge between improving and worsening;
* the number of tasks with weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "active_constraints",
    "condition_number",
    "gradient_cosines",
    "step_scalars",
    "task_names",
]


def task_names(k: int, names: Sequence[str] | None = None) -> list[str]:
    """``names`` checked against k, or "task0".."task{k-1}"."""
    if names is None:
        return [f"task{i}" for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"got {len(names)} task names for {k} tasks.")
    if len(set(names)) != k:
        raise ValueError(f"task names must be distinct, got {names}.")
    return names


def _check_gram(gram: Tensor) -> Tensor:
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram must be a (k, k) tensor, got {shape}.")
    G = gram.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(G).all()):
        raise ValueError(
            "gram has NaN/Inf entries; log only steps that were applied (result.skipped is False)."
        )
    return 0.5 * (G + G.T)


def gradient_cosines(gram: Tensor) -> Tensor:
    """C (k × k) with Cᵢⱼ = Gᵢⱼ/√(GᵢᵢGⱼⱼ), clipped to [−1, 1]; NaN only where a gradient is zero."""
    G = _check_gram(gram)
    d = torch.diagonal(G).clamp_min(0).sqrt()
    denom = d[:, None] * d[None, :]
    C = torch.where(
        denom > 0,
        G / torch.where(denom > 0, denom, torch.ones_like(denom)),
        torch.full_like(G, float("nan")),
    )
    return C.clamp(-1.0, 1.0)


def condition_number(gram: Tensor, rel_floor: float = 1e-12) -> float:
    """κ(G) = λ_max/λ_min from the symmetric eigenvalues; inf when λ_min ≤ rel_floor·λ_max."""
    G = _check_gram(gram)
    ev = torch.linalg.eigvalsh(G)
    top = float(ev[-1])
    if top <= 0:
        return math.inf
    low = float(ev[0])
    return math.inf if low <= rel_floor * top else top / low


def active_constraints(gram: Tensor, weights: Tensor, tol: float = 1e-6) -> int:
    """#{i : |(Gw)ᵢ| ≤ tol·√(wᵀGw)·√Gᵢᵢ, Gᵢᵢ > 0}: tasks the update d = Jᵀw leaves unchanged to
    first order.
    """
    G = _check_gram(gram)
    w = weights.detach().to(torch.float64).cpu().reshape(-1)
    if w.shape[0] != G.shape[0]:
        raise ValueError(f"weights has {w.shape[0]} entries but gram is {G.shape[0]}×{G.shape[0]}.")
    Gw = G @ w
    dn = float(w @ Gw) ** 0.5 if float(w @ Gw) > 0 else 0.0
    gn = torch.diagonal(G).clamp_min(0).sqrt()
    ok = gn > 0
    return int(((Gw.abs() <= tol * dn * gn) & ok).sum())


def step_scalars(
    weights: Tensor,
    gram: Tensor | None = None,
    losses: Tensor | None = None,
    names: Sequence[str] | None = None,
    *,
    tol: float = 1e-6,
) -> dict[str, float]:
    """Flat {name: value} for one step: ``weight/<task>``, ``loss/<task>``, ``cos/<a>|<b>`` (a < b
    in
    task order), ``gram/cond``, ``gram/active_constraints``, ``gram/zero_gradient_tasks``,
    ``weights/zero``. Entries needing the Gram are left out when ``gram`` is None.
    """
    w = weights.detach().to(torch.float64).cpu().reshape(-1)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(
            "weights are not finite; the step was skipped and should not be logged as applied."
        )
    k = w.shape[0]
    tn = task_names(k, names)
    out: dict[str, float] = {f"weight/{n}": float(w[i]) for i, n in enumerate(tn)}
    out["weights/zero"] = float(int((w == 0).sum()))
    if losses is not None:
        L = losses.detach().to(torch.float64).cpu().reshape(-1)
        if L.shape[0] != k:
            raise ValueError(f"losses has {L.shape[0]} entries for {k} weights.")
        out.update({f"loss/{n}": float(L[i]) for i, n in enumerate(tn)})
    if gram is not None:
        if gram.shape[-1] != k:
            raise ValueError(f"gram is for {gram.shape[-1]} tasks but there are {k} weights.")
        C = gradient_cosines(gram)
        for i in range(k):
            for j in range(i + 1, k):
                if not math.isnan(float(C[i, j])):
                    out[f"cos/{tn[i]}|{tn[j]}"] = float(C[i, j])
        G = _check_gram(gram)
        out["gram/cond"] = condition_number(G)
        out["gram/active_constraints"] = float(active_constraints(G, w, tol))
        out["gram/zero_gradient_tasks"] = float(int((torch.diagonal(G) <= 0).sum()))
    return out
