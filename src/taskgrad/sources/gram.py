"""Gradient sources: the k×k Gram matrix of the task gradients, computed from the losses.

* :func:`parameter_gram`: G = J Jᵀ with J the Jacobian of the losses with respect to parameters,
  from batched vector-Jacobian products (one batched backward per parameter chunk).
* :func:`representation_gram`: G with J the Jacobian with respect to a feature tensor z (the
  encoder's output): G_ij = Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩, costing a backward through the heads only.

Both keep the graph alive (``retain_graph=True``) so that the weighted backward can follow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._graph import as_loss_vector, check_params, depends_on, loss_list

__all__ = ["parameter_gram", "representation_gram"]


def _gram_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunks(params: list[Tensor], k: int, max_jacobian_numel: int | None) -> list[list[Tensor]]:
    if max_jacobian_numel is None:
        return [params]
    if max_jacobian_numel < k:
        raise ValueError(f"max_jacobian_numel={max_jacobian_numel} is smaller than k={k} (one row entry per task).")
    groups: list[list[Tensor]] = [[]]
    size = 0
    for p in params:
        if groups[-1] and (size + p.numel()) * k > max_jacobian_numel:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel()
    return groups


def _task_vjps(losses: Tensor, inputs: list[Tensor], batched: bool) -> list[Tensor | None]:
    """Rows of the Jacobian of ``losses`` (k,) w.r.t. each input: a list of (k, *input.shape)."""
    k = losses.shape[0]
    if batched:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        try:
            return list(
                torch.autograd.grad(
                    losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
            )
        except RuntimeError as err:  # an op without a vmap rule: fall back to a loop
            if "vmap" not in str(err).lower() and "batched" not in str(err).lower():
                raise
    rows: list[list[Tensor | None]] = [
        list(torch.autograd.grad(losses[i], inputs, retain_graph=True, allow_unused=True)) for i in range(k)
    ]
    out: list[Tensor | None] = []
    for j, x in enumerate(inputs):
        col = [r[j] for r in rows]
        if all(g is None for g in col):
            out.append(None)
        else:
            out.append(torch.stack([torch.zeros_like(x) if g is None else g for g in col]))
    return out


def parameter_gram(
    losses: Sequence[Tensor] | Tensor,
    params: Sequence[Tensor],
    *,
    max_jacobian_numel: int | None = None,
    batched: bool = True,
) -> Tensor:
    """G = Σ_p J_p J_pᵀ (k×k) for the Jacobian J of the k losses with respect to ``params``.

    Args:
        losses: k scalar losses (a list or a (k,) tensor) sharing one graph.
        params: the parameters whose gradients are compared (usually the shared ones).
        max_jacobian_numel: bound on the Jacobian entries alive at once; the parameters are split
            into chunks of at most max_jacobian_numel / k entries, each costing one batched
            backward. None: one chunk (fastest, k × P entries alive).
        batched: use ``is_grads_batched`` (vmap over the backward); False, or an op without a
            batching rule, loops over the k tasks instead.

    Returns:
        G in float32 (float64 when the parameters are float64). A task whose loss does not depend
        on ``params`` has a zero row.
    """
    L = as_loss_vector(losses)
    plist = check_params(params)
    k = L.shape[0]
    dtype = _gram_dtype(plist[0])
    G = torch.zeros(k, k, dtype=dtype, device=L.device)
    for group in _chunks(plist, k, max_jacobian_numel):
        rows = _task_vjps(L, group, batched)
        for g in rows:
            if g is None:
                continue
            flat = g.reshape(k, -1).to(dtype)
            G = G + flat @ flat.T
        del rows
    return 0.5 * (G + G.T)


def representation_gram(
    losses: Sequence[Tensor] | Tensor,
    features: Tensor | Sequence[Tensor],
    *,
    batched: bool = True,
) -> Tensor:
    """G_ij = ⟨∂Lᵢ/∂z, ∂Lⱼ/∂z⟩ summed over all entries of the feature tensor(s) z (k×k).

    With z of shape (B, …) this is Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩, the Gram of the task gradients at
    the shared representation: a cheap stand-in for the parameter Gram (MGDA-UB, Sener & Koltun
    2018). Raises ValueError when ``features`` is not in the losses' graph or a loss does not
    depend on it.
    """
    items = loss_list(losses)
    L = torch.stack(items)
    feats = [features] if isinstance(features, Tensor) else list(features)
    if not feats:
        raise ValueError("features is empty: pass the shared representation tensor z.")
    for i, z in enumerate(feats):
        if not isinstance(z, Tensor):
            raise TypeError(f"features[{i}] is a {type(z).__name__}, not a torch.Tensor.")
        if not z.requires_grad:
            raise ValueError(
                f"features[{i}] (shape {tuple(z.shape)}) is not in the autograd graph (requires_grad "
                "is False). Pass the encoder's output z itself, not z.detach() or a tensor made "
                "under torch.no_grad()."
            )
    k = L.shape[0]
    rows = _task_vjps(L, feats, batched)
    if all(g is None for g in rows):
        raise ValueError(
            "features are not in the graph of any loss: pass the tensor the task heads were "
            "computed from (the encoder's output), not a copy of it."
        )
    dtype = _gram_dtype(feats[0])
    flat = torch.cat([g.reshape(k, -1).to(dtype) for g in rows if g is not None], dim=1)
    idx = [i for i, loss in enumerate(items) if not depends_on(loss, feats)]
    if idx:
        raise ValueError(
            f"loss(es) {idx} do not depend on the features, so their gradient at the "
            "representation says nothing about the shared parameters. Every loss must be computed from the features (a task-specific-only loss "
            "should be added separately, or use the parameter source)."
        )
    G = flat @ flat.T
    return 0.5 * (G + G.T)
