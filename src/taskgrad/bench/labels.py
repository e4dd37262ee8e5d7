"""Partially labelled tasks in the harness: the training label mask of a run and the masked task
losses of a batch.

* :func:`draw_labelled`: the rows of a task kept labelled at a label fraction f (or count m).
  Among the n_i training rows labelled for task i (all of them, or those of the problem's native
  mask), m_i = round(f·n_i) are kept (m_i = m for a count): the first m_i of a permutation drawn
  by a generator seeded with (label seed, i) alone. The subset is a function of (native mask,
  training rows, f or m, seed, i) only, so every method and single-task baseline of one label
  seed trains on the same labelled examples (paired runs), a task's subset does not depend on the
  other tasks' settings, and the subsets of one seed are nested (fewer labels keep a subset of
  the rows of more).
* :func:`training_label_mask`: the (N_train, k) mask of a run: the native mask, then each task's
  fraction or count drawn on top of it (None when every example is labelled for every task).
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


def draw_labelled(
    candidates: Tensor, fraction: float | None, seed: int, task: int, count: int | None = None
) -> Tensor:
    """The rows kept labelled among ``candidates`` (the rows labelled before the draw): the first
    m rows of a permutation of the n candidates drawn by a generator seeded with (``seed``,
    ``task``), sorted; m = round(f·n) for ``fraction`` f, or m = ``count`` (then ``fraction`` is
    None). f = 1 keeps every row.
    """
    n = int(candidates.numel())
    if count is not None:
        if count > n:
            raise ValueError(
                f"{count} labelled examples asked of the task, which has {n} labelled training "
                "examples (lower the count)."
            )
        m = count
    else:
        if fraction is None or not 0.0 < fraction <= 1.0:
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
    counts: dict[str, int] | None = None,
) -> Tensor | None:
    """The (n, k) label mask of the training split of a run: ``native`` (the problem's own mask;
    None: all labelled), then for each task named in ``fractions`` only the rows
    :func:`draw_labelled` keeps among its labelled training rows ``rows`` (the rows trained on,
    e.g. without a carved validation set; None: all n), and likewise for each task named in
    ``counts`` (a number of rows instead of a fraction). Rows outside ``rows`` keep their native
    flags (they are not trained on). None when the result labels every example for every task.
    """
    k = len(tasks)
    counts = counts or {}
    for key, tbl in (("label_fractions", fractions), ("label_counts", counts)):
        unknown = sorted(set(tbl) - set(tasks))
        if unknown:
            raise ValueError(
                f"{key} names {unknown}, which are not tasks of the problem; its tasks are "
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
        f, c = fractions.get(t, 1.0), counts.get(t)
        if f == 1.0 and c is None:
            continue
        candidates = (mask[:, i] & in_training).nonzero().squeeze(-1)
        try:
            keep = draw_labelled(candidates, None if c is not None else f, seed, i, c)
        except ValueError as e:
            key = "label_counts" if c is not None else "label_fractions"
            raise ValueError(f"{key}[{t!r}]: {e}") from e
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
