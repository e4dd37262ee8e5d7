"""`taskgrad.backward`: compute what the method needs, pick weights, backward once.

``backward(losses, method=M)`` fills ``.grad`` exactly as ``sum(w_i * L_i).backward()`` would
with w = M(gram=G, losses=L): for shared and task-specific parameters alike, accumulating into
existing gradients as a plain backward does, and with any torch.optim optimizer afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..methods.loss.mean import Mean
from ..sources._graph import check_params, loss_list, shared_parameters
from ..sources.gram import parameter_gram, representation_gram

__all__ = ["BackwardResult", "backward"]


@dataclass
class BackwardResult:
    """What one call of :func:`backward` did.

    weights: (k,) the task weights w applied (detached).
    gram: (k, k) the Gram matrix the method saw, or None for a method that needs none.
    losses: (k,) the detached losses.
    skipped: True when the step was skipped because of non-finite values (``nonfinite="skip"``);
        then no ``.grad`` was touched.
    """

    weights: Tensor
    gram: Tensor | None
    losses: Tensor
    skipped: bool = False


def backward(
    losses: Sequence[Tensor] | Tensor,
    params: Sequence[Tensor] | None = None,
    method: Weighting | None = None,
    features: Tensor | Sequence[Tensor] | None = None,
    *,
    max_jacobian_numel: int | None = None,
    nonfinite: Literal["raise", "skip"] = "raise",
    retain_graph: bool = False,
) -> BackwardResult:
    """Backward of Σ wᵢLᵢ with w = method(gram=G, losses=L): one weighted backward after the Gram.

    Args:
        losses: k scalar losses sharing a graph (list or (k,) tensor).
        params: parameters whose task gradients form the Gram matrix (the full-parameter source).
            Default: the parameters reachable from at least two losses (the shared ones).
            Ignored when ``features`` is given.
        method: a :class:`~taskgrad.methods.Weighting`; default :class:`~taskgrad.Mean`.
        features: the shared representation z; when given, G is the Gram of ∂Lᵢ/∂z (cheap).
        max_jacobian_numel: memory bound for the parameter source (see
            :func:`~taskgrad.sources.parameter_gram`).
        nonfinite: "raise" (default) raises FloatingPointError on NaN/Inf losses or Gram;
            "skip" leaves every ``.grad`` untouched and returns ``skipped=True``, as GradScaler
            skips a step with non-finite gradients.
        retain_graph: keep the graph after the weighted backward.

    Returns:
        A :class:`BackwardResult` with the weights, the Gram matrix and the losses.
    """
    if nonfinite not in ("raise", "skip"):
        raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}.")
    method = Mean() if method is None else method
    if not isinstance(method, Weighting):
        raise TypeError(f"method must be a taskgrad Weighting (e.g. taskgrad.MGDA()), got {type(method).__name__}.")
    items = loss_list(losses)
    L = torch.stack(items)
    L_det = L.detach()
    k = L.shape[0]

    def skip(gram: Tensor | None, what: str) -> BackwardResult:
        if nonfinite == "raise":
            raise FloatingPointError(
                f"{what} is not finite (NaN or Inf); the step cannot be taken. Lower the learning "
                "rate, check the inputs, or pass nonfinite='skip' to skip such steps."
            )
        nan = torch.full((k,), float("nan"), dtype=L_det.dtype, device=L.device)
        return BackwardResult(weights=nan, gram=gram, losses=L_det, skipped=True)

    if not bool(torch.isfinite(L_det).all()):
        return skip(None, "a task loss")
    gram: Tensor | None = None
    if "gram" in method.needs:
        if features is not None:
            gram = representation_gram(items, features)
        else:
            plist = shared_parameters(items) if params is None else check_params(params)
            gram = parameter_gram(L, plist, max_jacobian_numel=max_jacobian_numel)
        if not bool(torch.isfinite(gram).all()):
            return skip(gram, "the Gram matrix of the task gradients")
    elif params is not None:
        check_params(params)
    w = method(gram=gram, losses=L_det.to(gram.dtype) if gram is not None else L_det)
    w = w.detach()
    if not bool(torch.isfinite(w).all()):
        return skip(gram, f"the weights returned by {type(method).__name__}")
    total = (w.to(L.dtype) * L).sum()
    total.backward(retain_graph=retain_graph)
    return BackwardResult(weights=w, gram=gram, losses=L_det)
