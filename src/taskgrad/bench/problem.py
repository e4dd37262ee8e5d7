"""The interface of a benchmark problem: data, model, task losses and per-task metrics.

A :class:`Problem` gives ``batch(idx, split)`` (inputs and targets on the device),
``make_model(**kw)`` (a module returning ``(z, outputs)``), ``losses(outputs, y)`` (k scalar task
losses) and ``metric_sums(outputs, y)`` (per-metric sums over a batch; ``evaluate`` divides by the
number of examples, or calls ``finalize`` for non-additive metrics such as AUC).
Each metric has a direction: :class:`Metric.higher_is_better` sets its sign in Δm.

Partially labelled training data: ``labelled`` (an (N_train, k) bool tensor, row b and column i
True when training example b carries a label of task i; None: every example labelled) marks what a
natively partially labelled data set has (e.g. NaN targets: :meth:`Problem.labelled_from_nan`).
Only the training split may be partially labelled; the ``"test"`` split and a problem's own
``"val"`` split are fully labelled. Training on a partially labelled batch computes each task's
loss on its labelled rows only (:meth:`Problem.masked_losses`, which calls
:meth:`Problem.task_loss` on those rows), so ``outputs[i]`` and ``y`` must have the batch on their
first axis; the rows kept labelled at a config's label fractions are drawn in
:mod:`taskgrad.bench.labels`.

The harness evaluates a validation split with :func:`split_evaluator`: metrics and task losses
from one forward pass per batch (``evaluate_with_losses``) unless a subclass overrides ``evaluate``
or ``mean_losses`` below it, and it also serves an ``evaluate`` written without ``indices=``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = ["Metric", "Problem", "split_evaluator"]


@dataclass(frozen=True)
class Metric:
    """A metric of one task: key ``"<task>/<name>"``; higher_is_better sets its sign in Δm."""

    task: str
    name: str
    higher_is_better: bool

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"


class Problem:
    """Base class: tensors ``x_train, y_train, x_test, y_test`` with a leading example axis."""

    tasks: list[str]
    metrics: list[Metric]

    labelled: Tensor | None = None

    def __init__(
        self,
        x_train: Any,
        y_train: Tensor,
        x_test: Any,
        y_test: Tensor,
        labelled: Tensor | None = None,
    ) -> None:
        self.x = {"train": x_train, "test": x_test}
        self.y = {"train": y_train, "test": y_test}
        self.device = torch.device("cpu")
        self.labelled = labelled

    @staticmethod
    def labelled_from_nan(y: Tensor) -> Tensor | None:
        """The label mask of targets ``y`` of shape (N, k) in which NaN means "not labelled":
        labelled[b, i] = ¬isnan(y[b, i]); None when every target is a number (all labelled).
        """
        if y.dim() != 2:
            raise ValueError(
                f"labelled_from_nan takes (N, k) targets, one column per task, got shape "
                f"{tuple(y.shape)}."
            )
        mask = ~torch.isnan(y)
        return None if bool(mask.all()) else mask.cpu()

    def label_mask(self) -> Tensor | None:
        """The training split's label mask, checked: an (N_train, k) bool CPU tensor with at least
        one labelled example per task, or None when every training example is labelled for every
        task (the default).
        """
        m = getattr(self, "labelled", None)
        if m is None:
            return None
        n, k = self.n("train"), len(self.tasks)
        name = type(self).__name__
        if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n, k):
            got = (
                f"a {m.dtype} tensor of shape {tuple(m.shape)}"
                if isinstance(m, Tensor)
                else type(m).__name__
            )
            raise ValueError(
                f"{name}.labelled must be a bool tensor of shape (N_train, k) = ({n}, {k}), one "
                f"flag per training example and task (True: labelled), got {got}."
            )
        m = m.cpu()
        none = [t for t, c in zip(self.tasks, m.sum(0).tolist(), strict=True) if c == 0]
        if none:
            raise ValueError(
                f"{name}.labelled has no labelled training example of the task(s) {none}."
            )
        return None if bool(m.all()) else m

    def n(self, split: str) -> int:
        return int(self.y[split].shape[0])

    def to(self, device: torch.device) -> Problem:
        """Move the data to ``device`` (once; batches are then slices on the device)."""
        if device != self.device:
            self.x = {k: v.to(device) for k, v in self.x.items()}
            self.y = {k: v.to(device) for k, v in self.y.items()}
            self.device = device
        return self

    def batch(self, idx: Tensor, split: str = "train") -> tuple[Any, Tensor]:
        idx = idx.to(self.device)
        return self.prepare(self.x[split][idx]), self.y[split][idx]

    def prepare(self, x: Tensor) -> Tensor:
        """Turn stored inputs into model inputs (e.g. uint8 images to floats)."""
        return x

    def make_model(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise NotImplementedError

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        """The loss of task i alone on a batch (``losses(outputs, y)[i]``). Partially labelled
        training calls it on the rows labelled for task i only; a problem overrides it to compute
        task i's loss without the other tasks' (whose targets may be NaN on those rows).
        """
        return self.losses(outputs, y)[i]

    def masked_losses(
        self, outputs: Sequence[Tensor], y: Tensor, labelled: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """(the k task losses of a batch, the (k,) bool ``present`` flags) given the batch's
        (B, k) label mask: L_i = (1/|R_i|) Σ_{b ∈ R_i} ℓ_i(b) over the rows R_i labelled for task
        i, computed by :meth:`task_loss` on those rows only (by ``losses(...)[i]`` on them when a
        subclass overrides ``losses`` but not ``task_loss``). A task with R_i = ∅ is absent
        (present[i] False) and its entry is a NaN placeholder, never differentiated: give the
        list, never a stack, with ``present=`` to the training step.
        """
        k = len(self.tasks)
        if tuple(labelled.shape) != (int(y.shape[0]), k):
            raise ValueError(
                f"the batch's label mask has shape {tuple(labelled.shape)}, expected "
                f"({int(y.shape[0])}, {k})."
            )
        mask = labelled.cpu()
        present = mask.any(0)
        cls = type(self)
        own = _defined_at(cls, "task_loss") <= _defined_at(cls, "losses")
        # every task's rows found on the host and moved to the device in one copy
        counts = mask.sum(0).tolist()
        flat = mask.t().nonzero()[:, 1].to(y.device)
        per_task = flat.split(counts)
        out: list[Tensor] = []
        for i in range(k):
            if not bool(present[i]):
                like = outputs[i]
                out.append(torch.full((), float("nan"), dtype=like.dtype, device=like.device))
                continue
            rows = per_task[i]
            view = cast(list[Tensor], _Rows(outputs, rows))
            out.append(self.task_loss(i, view, y[rows]) if own else self.losses(view, y[rows])[i])
        return out, present

    def metric_sums(self, outputs: list[Tensor], y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def finalize(self, sums: dict[str, float], n: int) -> dict[str, float]:
        return {k: v / n for k, v in sums.items()}

    def has_split(self, split: str) -> bool:
        """Whether the problem holds a non-empty ``split`` (e.g. its own ``"val"`` split)."""
        return split in self.y and self.n(split) > 0

    @staticmethod
    def _chunks(n: int, batch_size: int, indices: Tensor | None) -> list[Tensor]:
        """Consecutive index batches over ``indices`` (default: 0..n−1)."""
        idx = torch.arange(n) if indices is None else indices
        return [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]

    def _eval_loop(
        self,
        model: nn.Module,
        batch_size: int,
        split: str,
        indices: Tensor | None,
        visit: Callable[[list[Tensor], Tensor], None] | None,
        with_losses: bool,
    ) -> list[float] | None:
        """One pass over ``split`` (or its rows ``indices``) in eval mode, restored afterwards:
        ``visit(outputs, y)`` on every batch and, with ``with_losses``, the k mean task losses
        L_i = Σ_b |b|·L_i(b) / n (the example average of per-batch mean losses).
        """
        n = self.n(split) if indices is None else len(indices)
        if with_losses and n == 0:
            raise ValueError(f"mean_losses over an empty {split!r} split.")
        was_training = model.training
        model.eval()
        total: list[float] = []
        try:
            with torch.no_grad():
                for idx in self._chunks(self.n(split), batch_size, indices):
                    x, y = self.batch(idx, split)
                    _, outs = model(x)
                    if visit is not None:
                        visit(outs, y)
                    if with_losses:
                        ls = [float(v) * len(idx) for v in self.losses(outs, y)]
                        total = ls if not total else [a + b for a, b in zip(total, ls, strict=True)]
        finally:
            model.train(was_training)
        if not with_losses:
            return None
        out = [t / n for t in total]
        bad = [t for t, v in zip(self.tasks, out, strict=True) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"{split} losses of {bad} are not finite: the model diverged (lower the learning "
                "rate)."
            )
        return out

    def _sum_metrics(
        self,
        model: nn.Module,
        batch_size: int,
        split: str,
        indices: Tensor | None,
        with_losses: bool,
    ) -> tuple[dict[str, float], list[float] | None]:
        sums: dict[str, float] = {}

        def visit(outs: list[Tensor], y: Tensor) -> None:
            for k, v in self.metric_sums(outs, y).items():
                sums[k] = sums.get(k, 0.0) + float(v)

        losses = self._eval_loop(model, batch_size, split, indices, visit, with_losses)
        out = self.finalize(sums, self.n(split) if indices is None else len(indices))
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"metrics {bad} are not finite: the model diverged (lower the learning rate)."
            )
        return out, losses

    def evaluate(
        self,
        model: nn.Module,
        batch_size: int = 1024,
        split: str = "test",
        indices: Tensor | None = None,
    ) -> dict[str, float]:
        """Every metric on ``split`` (or on its rows ``indices``; model in eval mode, restored
        afterwards).
        """
        return self._sum_metrics(model, batch_size, split, indices, with_losses=False)[0]

    def mean_losses(
        self,
        model: nn.Module,
        batch_size: int = 1024,
        split: str = "test",
        indices: Tensor | None = None,
    ) -> list[float]:
        """The k task losses over ``split`` (or its rows ``indices``): L_i = Σ_b |b|·L_i(b) / n, the
        example average of per-batch mean losses (exact for losses that are means over examples).
        """
        out = self._eval_loop(model, batch_size, split, indices, None, with_losses=True)
        assert out is not None
        return out

    def evaluate_with_losses(
        self,
        model: nn.Module,
        batch_size: int = 1024,
        split: str = "test",
        indices: Tensor | None = None,
    ) -> tuple[dict[str, float], list[float]]:
        """``(evaluate(...), mean_losses(...))`` from one forward pass per batch (the same numbers
        at
        half the cost). A subclass with its own ``evaluate`` overrides this too (see CensusProblem),
        or :func:`split_evaluator` calls its ``evaluate`` and ``mean_losses`` instead.
        """
        metrics, losses = self._sum_metrics(model, batch_size, split, indices, with_losses=True)
        assert losses is not None
        return metrics, losses


class _Rows(Sequence[Tensor]):
    """Task outputs restricted to some rows, each sliced when read (a task loss that reads only
    its own output slices only that one).
    """

    def __init__(self, outputs: Sequence[Tensor], rows: Tensor) -> None:
        self.outputs, self.rows = outputs, rows

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, j: int) -> Tensor:  # type: ignore[override]
        return self.outputs[j][self.rows]

    def __iter__(self) -> Iterator[Tensor]:
        return (o[self.rows] for o in self.outputs)


def _defined_at(cls: type, name: str) -> int:
    """Position in ``cls.__mro__`` of the class whose body defines ``name`` (0: ``cls`` itself)."""
    return next(i for i, c in enumerate(cls.__mro__) if name in vars(c))


def _takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): assume the current one
        return True
    return any(
        (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        or p.kind is p.VAR_KEYWORD
        for p in params
    )


def _signature(method: str) -> str:
    returns = "dict[str, float]" if method == "evaluate" else "list[float]"
    return f"def {method}(self, model, batch_size=1024, split='test', indices=None) -> {returns}"


_ROWS = (
    "val_rows"  # the split name under which an evaluate without indices= sees the validation rows
)


def _rows_as_split(
    problem: Problem, split: str, indices: Tensor, method: str = "evaluate"
) -> Problem:
    """A shallow copy of ``problem`` whose split ``"val_rows"`` holds the rows ``indices`` of
    ``split``
    (for an ``evaluate`` that takes ``split=`` but no ``indices=``; the problem itself is
    unchanged).
    """
    name = f"{type(problem).__name__}.{method}"
    xs, ys = problem.x.get(split), problem.y.get(split)
    idx = indices.to(problem.device)
    try:
        x, y = xs[idx], ys[idx]  # type: ignore[index]
        same = type(x) is type(xs) and type(y) is type(ys)
        why = (
            ""
            if same
            else f"{type(xs).__name__}[rows] is a {type(x).__name__}, not a {type(xs).__name__}"
        )
    except Exception as e:  # noqa: BLE001 (any storage that cannot be indexed by rows)
        why = f"{type(xs).__name__}[rows] fails: {type(e).__name__}: {e}"
    if why:
        raise TypeError(
            f"{name} takes no indices= argument and its {split!r} data cannot be sliced into a "
            "split "
            f"of the validation rows ({why}): implement `{_signature(method)}` (on the rows "
            "`indices` of "
            "`split`, every row when None)."
        )
    view = copy.copy(problem)
    view.x, view.y = {**problem.x, _ROWS: x}, {**problem.y, _ROWS: y}
    return view


def split_evaluator(
    problem: Problem, split: str, indices: Tensor | None = None
) -> Callable[[nn.Module, int], tuple[dict[str, float], list[float]]]:
    """``f(model, batch_size) → (metrics, task losses)`` on ``split`` (or its rows ``indices``),
    what
    ``problem.evaluate`` and ``problem.mean_losses`` give there.

    One forward pass per batch (``evaluate_with_losses``) unless a subclass overrides ``evaluate``
    or
    ``mean_losses`` below the class that defines ``evaluate_with_losses``: their own code then runs,
    one pass each. An ``evaluate`` without ``indices=`` (the signature before validation splits) is
    served by a copy of the problem whose split ``"val_rows"`` holds the rows (sliced once, here);
    one
    without ``split=`` cannot evaluate a validation split: a ``TypeError`` here, before any
    training.
    """
    cls = type(problem)
    if _defined_at(cls, "evaluate_with_losses") <= min(
        _defined_at(cls, "evaluate"), _defined_at(cls, "mean_losses")
    ):
        return lambda model, bs: problem.evaluate_with_losses(
            model, bs, split=split, indices=indices
        )

    views: list[Problem] = []  # the copy with the rows as a split, made once if needed

    def bind(method: str) -> Callable[[nn.Module, int], Any]:
        fn = getattr(problem, method)
        if not _takes(fn, "split"):
            raise TypeError(
                f"{cls.__name__}.{method} takes no split= argument, so the harness cannot evaluate "
                "the validation "
                f"split ({split!r}{'' if indices is None else f', {len(indices)} rows'}): "
                "implement "
                f"`{_signature(method)}`"
                + (
                    ", or train without a validation split (val_fraction = 0, [selection] "
                    "criterion = 'last')"
                    if indices is not None
                    else ""
                )
                + "."
            )
        if _takes(fn, "indices"):
            return lambda model, bs: fn(model, bs, split=split, indices=indices)
        if indices is None:
            return lambda model, bs: fn(model, bs, split=split)
        if not views:
            views.append(_rows_as_split(problem, split, indices, method))
        view_fn = getattr(views[0], method)
        return lambda model, bs: view_fn(model, bs, split=_ROWS)

    metrics, losses = bind("evaluate"), bind("mean_losses")
    return lambda model, bs: (metrics(model, bs), losses(model, bs))
