"""Full-parameter Gram without a stored Jacobian: G = Σ_p J_p J_pᵀ accumulated per parameter block.

One batched backward (vmap over the k one-hot cotangents) runs through the graph; a gradient hook
on every parameter receives that block's k task-gradient rows J_p (k × numel(p)) as soon as they
are computed, adds J_p J_pᵀ to G, and hands autograd back a zero-stride placeholder, so the block
is freed at once. Peak memory: the graph's activations, the k batched activation-cotangents that
any batched backward carries, and the largest single block k × max_p numel(p) (not k × P).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._graph import as_loss_vector, check_params
from .gram import _gram_dtype, _task_vjps

__all__ = ["blockwise_gram", "for_each_block"]


def _unwrap(g: Tensor, k: int) -> Tensor | None:
    """The (k, *shape) tensor behind a gradient seen inside torch.func.vmap (None if unavailable)."""
    try:
        from torch._C import _functorch as F  # private, guarded: falls back when it changes

        level = F.maybe_get_level(g)
        if level < 0:
            return None
        raw, bdim = F._unwrap_batched(g, level)
    except Exception:  # pragma: no cover - depends on torch internals
        return None
    if bdim is None:  # the same gradient for every task
        return raw.reshape(1, -1).expand(k, -1)
    return raw.movedim(bdim, 0).reshape(k, -1)


def for_each_block(
    losses: Tensor, params: list[Tensor], consume: Callable[[int, Tensor], None]
) -> None:
    """Call ``consume(j, J_j)`` with J_j = ∂losses/∂params[j] as a (k, numel) matrix, block by block.

    One vmapped backward over the k one-hot cotangents; each block is handed over by a gradient
    hook and then dropped (autograd keeps only a zero-stride placeholder). A parameter that no
    loss reaches is never handed over. Falls back to a loop of k backwards holding all k × P rows
    when the batched backward cannot run (an op without a vmap rule).
    """
    k = losses.shape[0]
    failed: list[str] = []

    def make_hook(j: int) -> Callable[[Tensor], Tensor]:
        def hook(g: Tensor) -> Tensor:
            rows = _unwrap(g, k)
            if rows is None:
                failed.append("could not unwrap the batched gradient")
                return g
            consume(j, rows)
            return torch.zeros((), dtype=g.dtype, device=g.device).expand(g.shape)

        return hook

    handles = [p.register_hook(make_hook(j)) for j, p in enumerate(params)]
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)

    def vjp(v: Tensor) -> tuple[Tensor | None, ...]:
        return torch.autograd.grad(losses, params, grad_outputs=v, retain_graph=True, allow_unused=True)

    try:
        torch.func.vmap(vjp)(eye)
    except RuntimeError as err:
        failed.append(str(err))
    finally:
        for h in handles:
            h.remove()
    if not failed:
        return
    rows = _task_vjps(losses, params, batched=False)
    for j, g in enumerate(rows):
        if g is not None:
            consume(j, g.reshape(k, -1))


def blockwise_gram(losses: Sequence[Tensor] | Tensor, params: Sequence[Tensor]) -> Tensor:
    """G = Σ_p J_p J_pᵀ (k×k), each block J_p freed as soon as it has been added.

    Same value as :func:`~taskgrad.sources.parameter_gram` (up to float rounding) at a peak memory
    of one block instead of the k × P Jacobian (see :func:`for_each_block` for the fallback).
    """
    L = as_loss_vector(losses)
    plist = check_params(params)
    k = L.shape[0]
    dtype = _gram_dtype(plist[0])
    acc = [torch.zeros(k, k, dtype=dtype, device=L.device)]

    def consume(j: int, rows: Tensor) -> None:
        rows = rows.to(dtype)
        acc[0] = acc[0] + rows @ rows.T

    for_each_block(L, plist, consume)
    G = acc[0]
    return 0.5 * (G + G.T)
