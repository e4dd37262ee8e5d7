"""Sketched Gram by forward-mode Jacobian-vector products.

With Ω = [ω_1 … ω_r] of i.i.d. standard normal directions in parameter space, E[ΩΩᵀ] = r·I, so
Ĝ = (JΩ)(JΩ)ᵀ / r is an unbiased estimate of G = JJᵀ. Each column Jω_j is one JVP (a forward
pass carrying a tangent), so the cost grows with r and the parameters perturbed, not with k.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["module_loss_fn", "sketch_gram", "sketch_jacobian"]

LossFn = Callable[[dict[str, Tensor]], Tensor]


def module_loss_fn(
    module: nn.Module,
    losses_from_outputs: Callable[[Any], Sequence[Tensor] | Tensor],
    *args: Any,
    **kwargs: Any,
) -> LossFn:
    """fn(params) = losses_from_outputs(module(*args, **kwargs)) with ``params`` (name -> tensor)
    substituted, for :func:`sketch_gram`.

    The module's buffers are cloned for every call, so BatchNorm running statistics are not
    updated a second time by the sketch's forward passes. A ``torch.compile``'d module is
    evaluated through its original (eager) module.
    """
    base = getattr(module, "_orig_mod", module)

    def fn(params: dict[str, Tensor]) -> Tensor:
        buffers = {n: b.clone() for n, b in base.named_buffers()}
        out = torch.func.functional_call(base, {**params, **buffers}, args, kwargs, strict=False)
        return torch.stack(
            [loss.reshape(()) for loss in as_loss_vector_nograd(losses_from_outputs(out))]
        )

    return fn


def as_loss_vector_nograd(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """The k scalar losses as a list (no requires_grad check: JVPs carry no autograd graph)."""
    items = list(losses.unbind()) if isinstance(losses, Tensor) else list(losses)
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss {i} is not a scalar tensor (got {shape}); reduce it with .mean()."
            )
    if not items:
        raise ValueError("the loss function returned no losses.")
    return items


def sketch_jacobian(
    fn: LossFn,
    params: Mapping[str, Tensor],
    r: int,
    *,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
) -> Tensor:
    """JΩ (k × r): the k losses' directional derivatives along r standard normal directions.

    ``chunk`` directions are pushed through one vmapped JVP at a time (memory ∝ chunk × P for the
    tangents); None pushes all r at once.
    """
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the number of sketch directions) must be a positive int, got {r!r}.")
    if not params:
        raise ValueError(
            "params is empty: pass the named parameters to perturb, e.g. "
            "dict(model.named_parameters())."
        )
    primals = {n: p.detach() for n, p in params.items()}
    chunk = r if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}.")

    def one(tangents: dict[str, Tensor]) -> Tensor:
        column: Tensor = torch.func.jvp(fn, (primals,), (tangents,))[1]
        return column

    cols: list[Tensor] = []
    done = 0
    while done < r:
        c = min(chunk, r - done)
        tangents = {
            n: torch.randn((c, *p.shape), generator=generator, dtype=p.dtype, device=p.device)
            for n, p in primals.items()
        }
        out = torch.func.vmap(one)(tangents)
        cols.append(out if out.dtype == torch.float64 else out.float())
        done += c
        del tangents
    return torch.cat(cols, dim=0).T


def sketch_gram(
    fn: LossFn,
    params: Mapping[str, Tensor],
    r: int,
    *,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Ĝ = (JΩ)(JΩ)ᵀ / r (k×k, float32), an unbiased estimate of JJᵀ from r forward-mode JVPs."""
    S = sketch_jacobian(fn, params, r, generator=generator, chunk=chunk)
    if S.dtype != torch.float64:
        S = S.float()
    G = S @ S.T / r
    return 0.5 * (G + G.T)
