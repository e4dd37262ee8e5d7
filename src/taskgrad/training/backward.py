"""`taskgrad.backward`: one call of the step object every entry point uses.

``backward(losses, method=M)`` fills ``.grad`` exactly as ``sum(w_i * L_i).backward()`` would
with w = M(gram=G, losses=L): for shared and task-specific parameters alike, accumulating into
existing gradients as a plain backward does, and with any torch.optim optimizer afterwards. It
is ``GradStep(method, source, ...).backward(losses, ...)``, so its defaults and results are
those of :class:`~taskgrad.training.GradStep`, :class:`~taskgrad.training.TaskOptimizer` and
:class:`~taskgrad.distributed.DistributedStep`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from ..methods import Weighting
from ..sources.objects import FullGram, GramSource, JacobianGram
from .step import GradStep, StepResult

__all__ = ["BackwardResult", "backward"]

#: the result of :func:`backward` (the one result type of every entry point)
BackwardResult = StepResult


def backward(  # noqa: D417  (the GradStep options are described together)
    losses: Sequence[Tensor] | Tensor,
    params: Sequence[Tensor] | None = None,
    method: Weighting | None = None,
    features: Tensor | Sequence[Tensor] | None = None,
    *,
    source: str | GramSource = "auto",
    loss_fn: object = None,
    max_jacobian_numel: int | None = None,
    nonfinite: Literal["auto", "raise", "skip"] = "auto",
    on_undefined: Literal["raise", "skip"] | Weighting = "skip",
    heads: Literal["weighted", "unweighted"] | None = None,
    max_norm: float | None = None,
    clip: Literal["all", "shared"] = "all",
    normalize: Literal["sum", "mean-norm"] | None = None,
    names: Sequence[str] | None = None,
    retain_graph: bool = False,
    present: Tensor | Sequence[bool] | Sequence[float] | None = None,
    absent_primary: Literal["skip"] | Weighting = "skip",
) -> StepResult:
    """Add ∇Σ wᵢLᵢ to ``.grad`` with w = method(gram=G, losses=L): :meth:`GradStep.backward` once.

    Args:
        losses: k scalar losses sharing a graph (a list, or a (k,) tensor made by torch.stack:
            both give the same result).
        params: parameters whose task gradients form the Gram (the full-parameter source).
            Default: the parameters reachable from at least two losses (the shared ones).
            Ignored when ``features`` is given.
        method: a :class:`~taskgrad.methods.Weighting`; default :class:`~taskgrad.Mean`.
        features: the shared representation z; when given, G is the Gram of ∂Lᵢ/∂z (cheap).
        source: the gradient source ("auto": representation with ``features``, else full).
        loss_fn: the losses as a function of the parameters, for the sketch source (a
            :class:`~taskgrad.sources.ModuleLoss`).
        max_jacobian_numel: memory bound for the stored-Jacobian source (selects
            :class:`~taskgrad.sources.JacobianGram`).
        nonfinite, on_undefined, heads, max_norm, clip, normalize, names: as for
            :class:`~taskgrad.training.GradStep` (defaults: a non-finite loss or gradient
            raises, or skips the step under an enabled GradScaler; a step where the method is
            undefined is skipped and reported in the result).
        retain_graph: keep the graph after the update.
        present: (k,) bool tensor (or non-negative counts, present where > 0), the tasks with a
            loss in this batch: the absent ones are left
            out of the Gram and the method, get weight 0 and are never back-propagated (see
            :meth:`GradStep._backward_present`); ``absent_primary`` is the rule for a
            primary/auxiliary method whose primary task is absent ("skip" or a Weighting).

    Returns:
        A :class:`StepResult` with the weights, the Gram matrix, the losses and, for a skipped
        step, ``skipped=True`` and the ``reason``.
    """
    if max_jacobian_numel is not None and source == "auto" and features is None:
        source = JacobianGram(max_jacobian_numel=max_jacobian_numel)
    elif source == "auto" and features is None:
        source = FullGram()
    step = GradStep(
        method,
        source,
        nonfinite=nonfinite,
        on_undefined=on_undefined,
        heads=heads,
        max_norm=max_norm,
        clip=clip,
        normalize=normalize,
        names=names,
    )
    fn = (lambda t: t.backward(retain_graph=True)) if retain_graph else None
    return step.backward(
        losses,
        features=features,
        params=params,
        loss_fn=loss_fn,
        backward_fn=fn,
        present=present,
        absent_primary=absent_primary,
    )
