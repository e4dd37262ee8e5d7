"""Closure protocol shared by the second-order optimizers: what a closure may return, and the
task weights w = method(gram=G, losses=L) of one step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..sources import as_loss_vector, reachable_leaves
from ..sources.gram import parameter_gram, representation_gram

__all__ = ["Closure", "evaluate", "loss_vector", "method_weights", "split_output"]

Closure = Callable[[], Any]


def split_output(out: Any) -> tuple[Any, dict[str, Any]]:
    """Closure output -> (losses, extras): a tensor/sequence of losses or a mapping with
    'losses'.
    """
    if isinstance(out, Mapping):
        if "losses" not in out:
            raise ValueError(
                f"the closure returned a mapping with keys {sorted(out)}; it needs 'losses' (and "
                "optionally 'outputs' for Gauss-Newton, 'features' for the representation Gram)."
            )
        unknown = set(out) - {"losses", "outputs", "features"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in the closure's mapping.")
        return out["losses"], {k: v for k, v in out.items() if k != "losses"}
    return out, {}


def loss_vector(losses: Any) -> Tensor:
    """The (k,) loss vector from a closure's losses (a scalar counts as k = 1; no graph needed
    under torch.no_grad).
    """
    if isinstance(losses, Tensor) and losses.dim() == 0:
        return losses.reshape(1)
    if isinstance(losses, Tensor) and not losses.requires_grad:  # under no_grad (line search)
        if losses.dim() != 1:
            raise ValueError(f"losses must be a scalar or (k,), got shape {tuple(losses.shape)}.")
        return losses
    if not isinstance(losses, Tensor) and all(
        isinstance(x, Tensor) and not x.requires_grad for x in losses
    ):
        return torch.stack([x.reshape(()) for x in losses])
    return as_loss_vector(losses)


def evaluate(closure: Closure) -> tuple[Tensor, dict[str, Any]]:
    losses, extra = split_output(closure())
    if not isinstance(
        losses, Tensor
    ):  # separate scalars: keep them to tell shared parameters apart
        extra["_items"] = list(losses)
    return loss_vector(losses), extra


def _shared_among(extra: Mapping[str, Any], params: Sequence[Tensor]) -> list[Tensor]:
    """Parameters (of ``params``) reached by ≥ 2 losses; all of ``params`` when that cannot be told
    (a stacked loss tensor reaches every parameter through its stack) or when none is shared.
    """
    items = extra.get("_items")
    if items is None or len(items) < 2:
        return list(params)
    count: dict[int, int] = {}
    for loss in items:
        for p in reachable_leaves(loss):
            count[id(p)] = count.get(id(p), 0) + 1
    shared = [p for p in params if count.get(id(p), 0) >= 2]
    return shared or list(params)


def method_weights(
    method: Weighting,
    L: Tensor,
    extra: Mapping[str, Any],
    params: Sequence[Tensor],
    gram_params: Sequence[Tensor] | None = None,
    gram_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """w = method(gram=G, losses=L): G from ``gram_fn(L)`` if given, else at the closure's
    ``features`` if it returned them, else over ``gram_params``, else over the parameters shared
    by ≥ 2 losses.
    """
    gram = None
    if "gram" in method.needs:
        if gram_fn is not None:
            gram = gram_fn(L)
            k = L.shape[0]
            if not isinstance(gram, Tensor) or gram.shape != (k, k):
                raise ValueError(
                    f"gram_fn must return a ({k}, {k}) tensor, got "
                    f"{getattr(gram, 'shape', type(gram))}."
                )
        elif extra.get("features") is not None:
            gram = representation_gram(L, extra["features"])
        else:
            plist = list(gram_params) if gram_params is not None else _shared_among(extra, params)
            gram = parameter_gram(L, plist)
    Ld = L.detach()
    w = method(gram=gram, losses=Ld.to(gram.dtype) if gram is not None else Ld)
    return w.detach().to(L.dtype)
