"""Partially labelled tasks: run a method on the tasks present in a batch only.

A batch may hold no labelled example of some task; its (masked-mean) loss is then NaN or
undefined. With ``present`` (a (k,) boolean tensor) the absent tasks are left out: the method
sees the Gram matrix and the losses of the present tasks only, the absent tasks get weight 0
and nothing of their loss reaches ``.grad``.

``present`` may also hold non-negative counts nᵢ (the labelled examples of task i in the batch;
present where nᵢ > 0). Where a task's loss is a mean over several batches b (the micro-batches
of an accumulation window, the ranks of a DDP step, or both) it is Lᵢ = Σ_b nᵢᵇ Lᵢᵇ / Σ_b nᵢᵇ
over the batches holding it: with masked-mean losses, the masked mean over the whole batch; with
a bool mask (nᵢᵇ ∈ {0, 1}), the plain mean over the batches where it is present, which is the
usual mean when every task is present everywhere. A task absent from every batch is absent
from the step.

State of a stateful method: a step advances the state of the present tasks only. Every tensor
of ``state_dict()`` whose trailing dimension is k is per-task (trailing (k, k): per pair of
tasks); the method runs on those tensors restricted to the present tasks, and afterwards only
the present entries are written back: the entries of absent tasks (and pairs involving one)
are bit-identical before and after the step. Other entries (step counters, a shared
optimizer step, random generators) advance as on any step. Concretely:

* DWA: the loss history shifts for the present tasks only; an absent task keeps its last two
  losses, so its descent rate is measured across its absence when it comes back.
* FAMO: the logits ξ, their Adam moments and the previous losses change for present tasks
  only (the Adam step count is shared and advances).
* GradVac: the EMA targets φ̂ᵢⱼ change only for pairs of present tasks.
* Uncertainty weighting (and the other learned per-task parameters): the log-variances of
  absent tasks and their Adam moments are unchanged.

A state that does not exist yet (the method has never run, or a history still filling) cannot
be written back per task: until the method has run once with every task present, a step with
absent tasks runs it on a temporary copy whose state is discarded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..methods.base import Weighting

__all__ = [
    "PresentView",
    "call_restricted",
    "check_present",
    "present_counts",
    "merge_state",
    "present_weights",
    "restrict_state",
]


def present_counts(present: Any, k: int) -> Tensor:
    """``present`` as (k,) float64 counts nᵢ ≥ 0 on the CPU: a bool mask gives 1 (present) and
    0 (absent); non-negative counts (e.g. the number of labelled examples of each task in the
    batch) are kept. A task is present when nᵢ > 0. Counts weight the means a task's loss is
    taken over (micro-batches, ranks): Lᵢ = Σ nᵢᵇ Lᵢᵇ / Σ nᵢᵇ over the batches b holding it.
    """
    p = torch.as_tensor(present)
    if p.is_complex():
        raise TypeError(
            "present must be a boolean tensor (True for a task present in the batch) or "
            f"non-negative real counts, got dtype {p.dtype}."
        )
    if p.shape != (k,):
        raise ValueError(
            f"present must have shape ({k},), one flag or count per task, got {tuple(p.shape)}."
        )
    n = p.detach().cpu().to(torch.float64)
    if not bool((torch.isfinite(n) & (n >= 0)).all()):
        raise ValueError(
            "present counts must be finite and non-negative (0: the task is absent), got "
            f"{p.tolist()}."
        )
    return n


def check_present(present: Any, k: int) -> Tensor | None:
    """Validate ``present`` for k tasks: a (k,) bool tensor (or a sequence of bools), or (k,)
    non-negative counts (:func:`present_counts`); returns the bool mask nᵢ > 0 on the CPU, or
    None when every task is present (nothing to do).
    """
    if present is None:
        return None
    p = present_counts(present, k) > 0
    return None if bool(p.all()) else p


class _Unmergeable(Exception):
    """The new state has per-task entries the old one has no slot for (a state still forming)."""


def _per_task_dims(x: Tensor, k: int) -> int:
    """How many trailing dimensions of x index tasks: 2 for (…, k, k), 1 for (…, k), else 0."""
    if x.dim() >= 2 and x.shape[-1] == k and x.shape[-2] == k:
        return 2
    if x.dim() >= 1 and x.shape[-1] == k:
        return 1
    return 0


def restrict_state(state: Any, idx: Tensor, k: int) -> Any:
    """The state with every per-task tensor restricted to the tasks ``idx`` (see the module doc)."""
    if isinstance(state, Tensor):
        n = _per_task_dims(state, k)
        if n == 2:
            return state[..., idx, :][..., idx].clone()
        if n == 1:
            return state[..., idx].clone()
        return state.clone()
    if isinstance(state, dict):
        return {key: restrict_state(v, idx, k) for key, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(restrict_state(v, idx, k) for v in state)
    return copy.deepcopy(state)


def merge_state(old: Any, new: Any, idx: Tensor, k: int) -> Any:
    """``old`` with the present entries ``idx`` of every per-task tensor taken from ``new`` (the
    state of the method run on the present tasks); everything else taken from ``new``.
    """
    m = idx.numel()
    if isinstance(old, Tensor) and isinstance(new, Tensor):
        n = _per_task_dims(old, k)
        if n == 0:
            return new
        out = old.clone()
        if n == 2:
            if new.shape[-2:] != (m, m):
                raise _Unmergeable
            sub = out[..., idx, :]
            sub[..., idx] = new.to(out)
            out[..., idx, :] = sub
        else:
            if new.shape[-1] != m:
                raise _Unmergeable
            out[..., idx] = new.to(out)
        return out
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) != set(new):
            raise _Unmergeable
        return {key: merge_state(old[key], new[key], idx, k) for key in new}
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        if len(old) != len(new):
            raise _Unmergeable
        return type(new)(merge_state(o, n, idx, k) for o, n in zip(old, new, strict=True))
    if (old is None) != (new is None) or any(
        isinstance(old, c) != isinstance(new, c) for c in (Tensor, dict, list, tuple)
    ):  # None -> a tensor or an optimizer's state dict: a state being created (or dropped)
        raise _Unmergeable
    return new


def call_restricted(
    method: Any, idx: Tensor, k: int, gram: Tensor | None, losses: Tensor | None
) -> Tensor:
    """The method's weights for the tasks ``idx`` of k, given their Gram and losses only; the
    method's per-task state advances for those tasks only (see the module docstring).
    """
    if idx.numel() == k:
        w: Tensor = method(gram=gram, losses=losses)
        return w
    old = method.state_dict()
    method.load_state_dict(restrict_state(old, idx.cpu(), k))
    try:
        w_sub: Tensor = method(gram=gram, losses=losses)
        new = method.state_dict()
    except BaseException:
        method.load_state_dict(old)
        raise
    try:
        merged = merge_state(old, new, idx.cpu(), k)
    except _Unmergeable:
        merged = old  # the state is still forming: this step ran on a temporary copy
    method.load_state_dict(merged)
    return w_sub


def present_weights(
    method: Any, gram: Tensor | None, losses: Tensor | None, present: Tensor
) -> Tensor:
    """w (k,) = the method on the present tasks (sub-Gram, sub-losses), 0 for absent tasks; the
    method's state advances for the present tasks only (see the module docstring).
    """
    k = present.shape[0]
    idx = present.nonzero().squeeze(-1)
    like = gram if gram is not None else losses
    assert like is not None
    w = torch.zeros(k, dtype=like.dtype, device=like.device)
    if idx.numel() == 0:
        return w
    dev_idx = idx.to(like.device)
    g = None if gram is None else gram[..., dev_idx, :][..., dev_idx]
    L = None if losses is None else losses[..., dev_idx]
    w[dev_idx] = call_restricted(method, idx, k, g, L).to(w)
    return w


class PresentView(Weighting):
    """A method seen through the present tasks: called with the Gram and losses of the present
    tasks only (m of k), it runs ``method`` on them with its state restricted to those tasks and
    writes the advanced per-task state back (:func:`call_restricted`). The training step uses it
    for ``present=``; ``needs`` and the other attributes are the wrapped method's. Build it with
    :meth:`of`, which gives the view the wrapped class's name (so messages name the method).
    """

    def __init__(self, method: Weighting, present: Tensor) -> None:
        self.method = method
        self.k = int(present.shape[0])
        self.idx = present.nonzero().squeeze(-1).cpu()
        self.needs = method.needs  # type: ignore[misc]  # per view: the wrapped method's inputs

    @classmethod
    def of(cls, method: Weighting, present: Tensor) -> PresentView:
        named = type(type(method).__name__, (cls,), {"__doc__": cls.__doc__})
        view: PresentView = named(method, present)
        return view

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        return call_restricted(self.method, self.idx, self.k, gram, losses)

    def __getattr__(self, name: str) -> Any:  # max_norm, method_name ... of the wrapped method
        if name == "method":
            raise AttributeError(name)
        return getattr(self.method, name)
