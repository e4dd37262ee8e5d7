"""Gradient sources: the k×k Gram matrix of the task gradients, computed from the losses.

* :func:`parameter_gram`: G = J Jᵀ with J the Jacobian of the losses with respect to parameters,
  from batched vector-Jacobian products (one batched backward per parameter chunk).
* :func:`representation_gram`: G with J the Jacobian with respect to a feature tensor z (the
  encoder's output): G_ij = Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩, costing one backward through the heads
  (each head once; see :func:`~taskgrad.sources.capture.feature_rows`).

A list of losses and the same losses stacked into a (k,) tensor give the same Gram: each task
is followed from its own loss, never through the stack.

Both keep the graph alive (``retain_graph=True``) so that the weighted backward can follow.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ._graph import LossSet, check_params, check_reach
from .capture import (
    REENTRANT,
    FeatureCapture,
    _is_reentrant_error,
    _is_vmap_error,
    capture_features,
    gram_dtype,
    guarded_grad,
)

__all__ = ["parameter_gram", "representation_gram"]


def _gram_dtype(t: Tensor) -> torch.dtype:
    return gram_dtype(t)


def _chunks(params: list[Tensor], k: int, max_jacobian_numel: int | None) -> list[list[Tensor]]:
    if max_jacobian_numel is None:
        return [params]
    if max_jacobian_numel < k:
        raise ValueError(
            f"max_jacobian_numel={max_jacobian_numel} is smaller than k={k} (one row entry per "
            "task)."
        )
    groups: list[list[Tensor]] = [[]]
    size = 0
    for p in params:
        if groups[-1] and (size + p.numel()) * k > max_jacobian_numel:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel()
    return groups


def _task_vjps(
    losses: LossSet | Tensor, inputs: list[Tensor], batched: bool
) -> list[Tensor | None]:
    """Rows of the Jacobian of the k losses w.r.t. each input: a list of (k, *input.shape).

    Batched: one backward with ``is_grads_batched`` over the k one-hot cotangents; when an op has
    no batching rule (torch says "Batching rule not implemented", or "vmap: ..."), a loop of
    per-task backwards, each through its own task's subgraph, instead.
    """
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    k = ls.k
    if batched:
        eye = torch.eye(k, dtype=ls.vector.dtype, device=ls.vector.device)
        try:
            return list(
                torch.autograd.grad(
                    ls.vector,
                    inputs,
                    grad_outputs=eye,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            )
        except RuntimeError as err:
            if _is_reentrant_error(err):
                raise ValueError(REENTRANT) from err
            if not _is_vmap_error(err):
                raise
    rows: list[list[Tensor | None]] = [
        list(guarded_grad(functools.partial(ls.task_grad, i, inputs))) for i in range(k)
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
    losses: Sequence[Tensor] | Tensor | LossSet,
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
        G in float32 (float64 when the parameters are float64). A listed parameter that no loss
        reaches, or a loss that reaches none of them, is a ValueError (as for every source).
    """
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    plist = check_params(params)
    check_reach(ls, plist)
    k = ls.k
    dtype = _gram_dtype(plist[0])
    G = torch.zeros(k, k, dtype=dtype, device=ls.vector.device)
    for group in _chunks(plist, k, max_jacobian_numel):
        rows = _task_vjps(ls, group, batched)
        for g in rows:
            if g is None:
                continue
            flat = g.reshape(k, -1).to(dtype)
            G = G + flat @ flat.T
        del rows
    return 0.5 * (G + G.T)


def representation_gram(
    losses: Sequence[Tensor] | Tensor | LossSet,
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
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    feats = check_features(features)
    return gram_of_capture(capture_features(ls, feats), feats)


def check_features(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """The feature tensors as a list, with clear errors for what cannot be differentiated at."""
    feats = [features] if isinstance(features, Tensor) else list(features)
    if not feats:
        raise ValueError("features is empty: pass the shared representation tensor z.")
    for i, z in enumerate(feats):
        if not isinstance(z, Tensor):
            raise TypeError(f"features[{i}] is a {type(z).__name__}, not a torch.Tensor.")
        if not z.requires_grad:
            raise ValueError(
                f"features[{i}] (shape {tuple(z.shape)}) is not in the autograd graph "
                "(requires_grad is False). Pass the encoder's output z itself, not z.detach() or "
                "a tensor made under torch.no_grad()."
            )
    return feats


def gram_of_capture(cap: FeatureCapture, feats: Sequence[Tensor]) -> Tensor:
    """The representation Gram from captured feature gradients, with the checks of
    :func:`representation_gram`.
    """
    unreached = cap.unreached
    if not any(cap.reached(f) for f in range(len(feats))):
        raise ValueError(
            "features are not in the graph of any loss: pass the tensor the task heads were "
            "computed from (the encoder's output), not a copy of it."
        )
    if unreached:
        raise ValueError(
            f"loss(es) {unreached} do not depend on the features, so their gradient at the "
            "representation says nothing about the shared parameters. Every loss must be computed "
            "from the features (a task-specific-only loss "
            "should be added separately, or use the parameter source)."
        )
    return cap.gram(_gram_dtype(feats[0]))
