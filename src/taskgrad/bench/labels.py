"""Partially labelled tasks in the harness: the training label mask of a run and the masked task
losses of a batch.

* :func:`draw_labelled`: the rows of a task kept labelled at a label fraction f. Among the n_i
  training rows labelled for task i (all of them, or those of the problem's native mask),
  m_i = round(f·n_i) are kept: the first m_i of a permutation drawn by a generator seeded with
  (label seed, i) alone. The subset is a function of (native mask, training rows, f, seed, i)
  only, so every method and single-task baseline of one label seed trains on the same labelled
  examples (paired runs), a task's subset does not depend on the other tasks' fractions, and the
  subsets of one seed are nested (a smaller fraction keeps a subset of a larger one's rows).
* :func:`training_label_mask`: the (N_train, k) mask of a run: the native mask, then each task's
  fraction drawn on top of it (None when every example is labelled for every task).
* :meth:`Problem.masked_losses <taskgrad.bench.problem.Problem.masked_losses>`: L_i = mean over
  the batch rows labelled for task i of task i's example losses, computed on those rows only (no
  loss is ever computed on an unlabelled target), and the (k,) ``present`` flags; a task with no
  labelled row in the batch is absent: its entry is a NaN placeholder, which ``present=`` of the
  training step never back-propagates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["draw_labelled", "label_counts", "training_label_mask"]


def draw_labelled(candidates: Tensor, fraction: float, seed: int, task: int) -> Tensor:
    """The rows kept labelled among ``candidates`` (the rows labelled before the draw) at
    ``fraction`` f: the first round(f·n) rows of a permutation of the n candidates drawn by a
    generator seeded with (``seed``, ``task``), sorted. f = 1 keeps every row.
    """
    n = int(candidates.numel())
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a label fraction must be in (0, 1], got {fraction!r}.")
    if fraction == 1.0:
        return candidates.clone()
    m = round(fraction * n)
    if m < 1:
        raise ValueError(
            f"label fraction {fraction:g} of the {n} labelled training examples of the task keeps "
            f"{m}: at least one is needed (raise the fraction)."
        )
    g = torch.Generator().manual_seed(1_000_033 * seed + 7_907 * task + 12_345)
    perm = torch.randperm(n, generator=g)
    return candidates[perm[:m]].sort().values


def training_label_mask(
    native: Tensor | None,
    n: int,
    tasks: Sequence[str],
    fractions: dict[str, float],
    seed: int,
    rows: Tensor | None = None,
) -> Tensor | None:
    """The (n, k) label mask of the training split of a run: ``native`` (the problem's own mask;
    None: all labelled), then for each task named in ``fractions`` only the rows
    :func:`draw_labelled` keeps among its labelled training rows ``rows`` (the rows trained on,
    e.g. without a carved validation set; None: all n). Rows outside ``rows`` keep their native
    flags (they are not trained on). None when the result labels every example for every task.
    """
    k = len(tasks)
    unknown = sorted(set(fractions) - set(tasks))
    if unknown:
        raise ValueError(
            f"label_fractions names {unknown}, which are not tasks of the problem; its tasks are "
            f"{list(tasks)}."
        )
    mask = torch.ones(n, k, dtype=torch.bool) if native is None else native.cpu().clone()
    if tuple(mask.shape) != (n, k):
        raise ValueError(
            f"the native label mask has shape {tuple(mask.shape)}, expected ({n}, {k})."
        )
    in_training = torch.zeros(n, dtype=torch.bool)
    in_training[torch.arange(n) if rows is None else rows.cpu()] = True
    for i, t in enumerate(tasks):
        f = fractions.get(t, 1.0)
        if f == 1.0:
            continue
        candidates = (mask[:, i] & in_training).nonzero().squeeze(-1)
        try:
            keep = draw_labelled(candidates, f, seed, i)
        except ValueError as e:
            raise ValueError(f"label_fractions[{t!r}]: {e}") from e
        column = mask[:, i] & ~in_training
        column[keep] = True
        mask[:, i] = column
    return None if bool(mask.all()) else mask


def label_counts(
    mask: Tensor | None, n: int, tasks: Sequence[str], rows: Tensor | None = None
) -> dict[str, int]:
    """{task: number of labelled training rows} among ``rows`` (None: all n)."""
    if mask is None:
        m = n if rows is None else int(rows.numel())
        return {t: m for t in tasks}
    sub = mask if rows is None else mask[rows.cpu()]
    return {t: int(c) for t, c in zip(tasks, sub.sum(0).tolist(), strict=True)}
