"""A small logger interface: ``logger.log(step, {name: value})`` and ``logger.log_step(step,
result)``.

Back ends: :class:`CSVLogger` (long format ``step,name,value``: one row per scalar, so the set of
names may change during training, and :func:`read_csv_log` reads it back),
:class:`TensorBoardLogger`
(needs the optional ``tensorboard`` package), :class:`MultiLogger` (several at once) and
:class:`MemoryLogger` (in memory, for tests and notebooks).
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from .stats import step_scalars

__all__ = [
    "CSVLogger",
    "MemoryLogger",
    "MultiLogger",
    "TensorBoardLogger",
    "TrainingLogger",
    "read_csv_log",
    "tensorboard_available",
]


class TrainingLogger(ABC):
    """Base class: implement :meth:`log`; :meth:`log_step` turns a step result into scalars."""

    def __init__(
        self, names: Sequence[str] | None = None, *, every: int = 1, tol: float = 1e-6
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.names = None if names is None else list(names)
        self.every = every
        self.tol = tol

    @abstractmethod
    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write the scalars of training step ``step``."""

    def log_step(
        self, step: int, result: Any, extra: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Log a step result (anything with ``.weights``, ``.gram``, ``.losses``, ``.skipped``).

        Skipped steps are logged as ``skipped = 1`` only (no NaN values). Steps not divisible by
        ``every`` are ignored. Returns what was written.
        """
        if step % self.every:
            return {}
        if getattr(result, "skipped", False):
            scalars = {"skipped": 1.0}
        else:
            scalars = step_scalars(
                result.weights,
                getattr(result, "gram", None),
                getattr(result, "losses", None),
                self.names,
                tol=self.tol,
            )
            scalars["skipped"] = 0.0
        if extra:
            scalars.update({k: float(v) for k, v in extra.items()})
        self.log(step, scalars)
        return scalars

    def flush(self) -> None:  # noqa: B027  (an optional hook: loggers without a buffer keep it)
        """Write buffered rows out."""

    def close(self) -> None:
        """Flush and release files."""
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else ("-inf" if v == -math.inf else repr(float(v)))


class CSVLogger(TrainingLogger):
    """Rows ``step,name,value`` appended to ``path`` (header written once; flushed every
    ``flush_every`` rows and on close). Pass ``append=False`` to start a new file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        names: Sequence[str] | None = None,
        *,
        every: int = 1,
        append: bool = False,
        flush_every: int = 256,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(names, every=every, tol=tol)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not append or not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a" if not new else "w", newline="")  # noqa: SIM115 (open until close())
        self._w = csv.writer(self._fh)
        if new:
            self._w.writerow(["step", "name", "value"])
        self._pending = 0
        self.flush_every = flush_every

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"refusing to log NaN for {name!r} at step {step}.")
            self._w.writerow([int(step), name, _fmt(value)])
            self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
        self._pending = 0

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


class MemoryLogger(TrainingLogger):
    """Keeps ``self.rows`` = [(step, name, value), ...] in memory."""

    def __init__(
        self, names: Sequence[str] | None = None, *, every: int = 1, tol: float = 1e-6
    ) -> None:
        super().__init__(names, every=every, tol=tol)
        self.rows: list[tuple[int, str, float]] = []

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.rows.extend((int(step), n, float(v)) for n, v in scalars.items())

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        """{name: (steps, values)} as :func:`read_csv_log` returns."""
        return _series(self.rows)


def tensorboard_available() -> bool:
    """Whether the optional ``tensorboard`` package (needed by :class:`TensorBoardLogger`)
    imports.
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLogger(TrainingLogger):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` (``pip install tensorboard``)."""

    def __init__(
        self,
        log_dir: str | os.PathLike,
        names: Sequence[str] | None = None,
        *,
        every: int = 1,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(names, every=every, tol=tol)
        if not tensorboard_available():
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard "
                "(or use CSVLogger, which needs nothing)."
            )
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), global_step=int(step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MultiLogger(TrainingLogger):
    """Forwards every call to several loggers (their own ``every`` is ignored).

    Task names: ``names`` if given, else the names the children were given (they must agree);
    a MultiLogger whose names are set later (e.g. by the Lightning mixin) passes them on.
    """

    def __init__(
        self,
        loggers: Iterable[TrainingLogger],
        names: Sequence[str] | None = None,
        *,
        every: int = 1,
        tol: float = 1e-6,
    ) -> None:
        self.loggers = list(loggers)
        if not self.loggers:
            raise ValueError("MultiLogger needs at least one logger.")
        given = {tuple(lg.names) for lg in self.loggers if lg.names is not None}
        if names is None and len(given) > 1:
            raise ValueError(
                f"the loggers of a MultiLogger were given different task names {sorted(given)}: "
                "give "
                "them the same names, or pass names= to the MultiLogger."
            )
        if names is None and given:
            names = list(given.pop())
        super().__init__(names, every=every, tol=tol)

    @property
    def names(self) -> list[str] | None:
        """The task names used for ``weight/<task>`` etc. (set on the children too)."""
        return self._names

    @names.setter
    def names(self, value: Sequence[str] | None) -> None:
        self._names = None if value is None else list(value)
        for lg in getattr(self, "loggers", ()):
            if value is not None:
                lg.names = list(value)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for lg in self.loggers:
            lg.log(step, scalars)

    def flush(self) -> None:
        for lg in self.loggers:
            lg.flush()

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def _series(rows: Iterable[tuple[int, str, float]]) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for step, name, value in rows:
        out[name][0].append(step)
        out[name][1].append(value)
    return dict(out)


def read_csv_log(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} from a :class:`CSVLogger` file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no log at {p}; write one with taskgrad.tracking.CSVLogger.")
    with open(p, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:  # created but never flushed (a run stopped before its first row)
            return {}
        if header != ["step", "name", "value"]:
            raise ValueError(
                f"{p} is not a taskgrad CSV log (header {header}, expected step,name,value)."
            )
        rows = [(int(s), n, float(v)) for s, n, v in reader]
    return _series(rows)
