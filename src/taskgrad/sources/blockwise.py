"""Full-parameter Gram without a stored Jacobian: G = Σ_p J_p J_pᵀ accumulated per parameter block.

One batched backward (vmap over the k one-hot cotangents) runs through the graph; a gradient hook
on every parameter receives that block's k task-gradient rows J_p (k × numel(p)) as soon as they
are computed, adds J_p J_pᵀ to G, and hands autograd back a zero-stride placeholder, so the block
is freed at once. Peak memory: the graph's activations, the k batched activation-cotangents that
any batched backward carries, and the largest single block k × max_p numel(p) (not k × P).
Blocks are handed over only once the whole batched backward has succeeded, so a failure part-way
(an op without a vmap rule) leaves nothing counted twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._graph import LossSet, check_params, check_reach
from .capture import REENTRANT, _is_reentrant_error, _is_vmap_error, gram_dtype, guarded_grad

__all__ = ["blockwise_gram", "for_each_block", "for_each_block_batched"]


def _unwrap(g: Tensor, k: int) -> Tensor | None:
    """The (k, *shape) tensor behind a gradient seen inside torch.func.vmap (None if
    unavailable).
    """
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


def for_each_block_batched(
    losses: Tensor, params: list[Tensor], consume: Callable[[int, Tensor], None]
) -> None:
    """Call ``consume(j, J_j)`` with J_j = ∂losses/∂params[j] as a (k, numel) matrix, block by
    block.

    One vmapped backward over the k one-hot cotangents of the (k,) tensor ``losses``; each block
    is handed over by a gradient hook and then dropped (autograd keeps only a zero-stride
    placeholder). A parameter that no loss reaches is never handed over. Raises RuntimeError
    when the batched backward cannot run (an op without a vmap rule); the caller must then
    discard what ``consume`` received.
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

    # torch's Tensor.register_hook is unannotated
    handles = [
        p.register_hook(make_hook(j))  # type: ignore[no-untyped-call]
        for j, p in enumerate(params)
    ]
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)

    def vjp(v: Tensor) -> tuple[Tensor | None, ...]:
        return torch.autograd.grad(
            losses, params, grad_outputs=v, retain_graph=True, allow_unused=True
        )

    try:
        torch.func.vmap(vjp)(eye)
    finally:
        for h in handles:
            h.remove()
    if failed:
        raise RuntimeError(f"vmap: batched gradients unavailable ({failed[0]}).")


def for_each_block(
    losses: Sequence[Tensor] | Tensor | LossSet,
    params: list[Tensor],
    consume: Callable[[int, Tensor], None],
    reset: Callable[[], None] | None = None,
) -> None:
    """Call ``consume(j, J_j)`` with J_j = ∂losses/∂params[j] as a (k, numel) matrix, block by
    block.

    The batched backward of :func:`for_each_block_batched`; when it cannot run (an op without a
    vmap rule), nothing it produced is used and a loop of per-task backwards (each through its
    own task's subgraph) gives the blocks instead. With ``reset``, blocks stream to ``consume``
    as they come and ``reset()`` is called before the fallback (the consumer forgets what it
    got); without it, blocks are held until the batched backward has succeeded. A parameter
    that no loss reaches is never handed over.
    """
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    held: list[tuple[int, Tensor]] = []
    sink = consume if reset is not None else (lambda j, rows: held.append((j, rows.clone())))
    try:
        for_each_block_batched(ls.vector, params, sink)
    except RuntimeError as err:
        if _is_reentrant_error(err):
            raise ValueError(REENTRANT) from err
        if not _is_vmap_error(err):
            raise
        held = []
        if reset is not None:
            reset()
        k = ls.k
        cols: list[list[Tensor | None]] = [
            list(guarded_grad(functools.partial(ls.task_grad, i, params))) for i in range(k)
        ]
        for j, p in enumerate(params):
            col = [cols[i][j] for i in range(k)]
            if all(g is None for g in col):
                continue
            held.append(
                (
                    j,
                    torch.stack([torch.zeros_like(p) if g is None else g for g in col]).reshape(
                        k, -1
                    ),
                )
            )
    for j, rows in held:
        consume(j, rows)


def blockwise_gram(losses: Sequence[Tensor] | Tensor | LossSet, params: Sequence[Tensor]) -> Tensor:
    """G = Σ_p J_p J_pᵀ (k×k), each block J_p freed as soon as it has been added.

    Same value as :func:`~taskgrad.sources.parameter_gram` (up to float rounding) at a peak memory
    of one block instead of the k × P Jacobian. Every listed parameter must be reached by some
    loss and every loss must reach some listed parameter (ValueError otherwise).
    """
    ls = losses if isinstance(losses, LossSet) else LossSet(losses)
    plist = check_params(params)
    check_reach(ls, plist)
    k = ls.k
    dtype = gram_dtype(plist[0])
    acc = [torch.zeros(k, k, dtype=dtype, device=ls.vector.device)]

    def consume(j: int, rows: Tensor) -> None:
        rows = rows.to(dtype)
        acc[0] = acc[0] + rows @ rows.T

    def reset() -> None:
        acc[0] = torch.zeros(k, k, dtype=dtype, device=ls.vector.device)

    for_each_block(ls, plist, consume, reset)
    G = acc[0]
    return 0.5 * (G + G.T)
