"""Training with a Jacobian aggregator without the Gram-based step: materialize J, aggregate, write
.grad.

Memory: J holds k·P numbers for the P shared parameters (k gradient copies), plus the
aggregator's own state (ExcessMTL, MoCo keep another k × P buffer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import Weighting

__all__ = ["backward_jacobian", "shared_jacobian"]


def _as_losses(losses: Tensor | Sequence[Tensor]) -> Tensor:
    L = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses
    if L.dim() != 1 or L.numel() == 0:
        raise ValueError(
            "losses must be k ≥ 1 scalar losses (a (k,) tensor or a list), got shape "
            f"{tuple(L.shape)}."
        )
    return L


def shared_jacobian(
    losses: Tensor | Sequence[Tensor], params: Sequence[Tensor], retain_graph: bool = True
) -> Tensor:
    """J (k, P): row i is ∂Lᵢ/∂θ flattened over ``params`` (a parameter that Lᵢ does not reach gives
    0).

    One backward pass per task (the graph is retained between them).
    """
    L = _as_losses(losses)
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the shared parameters the Jacobian is taken over.")
    rows = []
    for i in range(L.shape[0]):
        grads = torch.autograd.grad(
            L[i], params, retain_graph=retain_graph or i < L.shape[0] - 1, allow_unused=True
        )
        flat = [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
        rows.append(torch.cat(flat))
    return torch.stack(rows)


def backward_jacobian(
    losses: Tensor | Sequence[Tensor],
    method: Weighting,
    params: Sequence[Tensor],
    task_params: Sequence[Tensor] | None = None,
) -> Tensor:
    """Accumulate the method's update into ``.grad``: d = method.aggregate(J, L) on the shared
    ``params``, and the unweighted ∇Σᵢ Lᵢ on ``task_params`` (each head gets its own task's
    gradient, as TorchJD's mtl_backward). Works for every method (a Gram method's aggregate is
    Jᵀw(JJᵀ)); returns d. Frees the graph.
    """
    L = _as_losses(losses)
    params = list(params)
    J = shared_jacobian(L, params, retain_graph=task_params is not None)
    d = method.aggregate(J, losses=L.detach())
    offset = 0
    for p in params:
        n = p.numel()
        g = d[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n
    if task_params:
        L.sum().backward(inputs=list(task_params))
    return d
