"""Validation of estimator inputs: a shared design (X, Y) or per-task designs [(X_t, y_t), ...]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike
from sklearn.utils import check_array
from sklearn.utils.validation import _check_sample_weight, check_consistent_length

# A design: a 2-D ndarray or a scipy.sparse matrix/array (scipy ships no type information).
Matrix = Any
# What the estimators accept: one design, or per-task designs [(X_t, y_t), ...] / [X_t, ...].
XInput = ArrayLike | Sequence[tuple[ArrayLike, ArrayLike]] | Sequence[ArrayLike]


def is_2d_matrix(a: object) -> bool:
    """True for a 2-D ndarray or scipy.sparse matrix/array (not for nested lists of numbers)."""
    return sp.issparse(a) or (isinstance(a, np.ndarray) and a.ndim == 2)


def is_per_task(X: object, y: object = None) -> bool:
    """Per-task input: a list of (X_t, y_t) pairs (y None) or a list of X_t with a list of y_t."""
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return False
    if y is None:
        return all(isinstance(e, tuple) and len(e) == 2 and is_2d_matrix(e[0]) for e in X)
    return all(is_2d_matrix(e) for e in X) and isinstance(y, (list, tuple))


@dataclass
class PerTaskData:
    """Tasks stacked row-wise: X (N, p) dense or CSR, y (N,), task (N,) sorted, weights (N,)."""

    X: np.ndarray | sp.csr_matrix
    y: np.ndarray
    task: np.ndarray
    sample_weight: np.ndarray
    n_tasks: int
    sizes: np.ndarray

    def split(self, v: np.ndarray) -> list[np.ndarray]:
        return np.split(v, np.cumsum(self.sizes)[:-1])


def split_pairs(X: Any, y: Any = None) -> tuple[list[Any], list[Any]]:
    """Return (list of X_t, list of y_t) from either per-task form."""
    if y is None:
        return [e[0] for e in X], [e[1] for e in X]
    if len(X) != len(y):
        raise ValueError(
            f"Per-task input has {len(X)} designs but {len(y)} targets; pass one y_t per X_t "
            "(or a list of (X_t, y_t) pairs)."
        )
    return list(X), list(y)


def check_per_task(
    Xs: Sequence[Any],
    ys: Sequence[Any] | None,
    sample_weight: Sequence[Any] | None = None,
    *,
    n_features: int | None = None,
    y_numeric: bool = True,
    need_y: bool = True,
) -> PerTaskData:
    """Validate per-task designs and stack them (sparse if any X_t is sparse)."""
    T = len(Xs)
    Xc: list[Matrix] = []
    yc: list[np.ndarray] = []
    counts: list[int] = []
    for t, Xt in enumerate(Xs):
        Xt = check_array(
            Xt, accept_sparse=["csr", "csc", "coo"], dtype=np.float64, input_name=f"X of task {t}"
        )
        if n_features is None:
            n_features = Xt.shape[1]
        if Xt.shape[1] != n_features:
            raise ValueError(
                f"Task {t} has {Xt.shape[1]} features but task 0 has {n_features}; every task's "
                "design must have the same columns (pad missing features with zeros)."
            )
        Xc.append(Xt)
        counts.append(Xt.shape[0])
        if need_y:
            assert ys is not None  # need_y: the caller passes the targets
            yt = np.asarray(ys[t])
            if yt.ndim == 2 and yt.shape[1] == 1:
                yt = yt.ravel()
            if yt.ndim != 1:
                raise ValueError(f"y of task {t} must be 1-D, got shape {yt.shape}.")
            if yt.shape[0] != Xt.shape[0]:
                raise ValueError(
                    f"Task {t} has {Xt.shape[0]} samples in X_t but {yt.shape[0]} in y_t; "
                    "each task's X_t and y_t must have the same number of rows."
                )
            if y_numeric:
                yt = check_array(yt, ensure_2d=False, dtype=np.float64, input_name=f"y of task {t}")
            yc.append(yt)
    sparse = any(sp.issparse(x) for x in Xc)
    X = sp.vstack([sp.csr_matrix(x) for x in Xc], format="csr") if sparse else np.vstack(Xc)
    sizes = np.asarray(counts, dtype=np.int64)
    task = np.repeat(np.arange(T), sizes)
    N = int(sizes.sum())
    if sample_weight is None:
        sw = np.ones(N)
    else:
        if not isinstance(sample_weight, (list, tuple)) or len(sample_weight) != T:
            raise ValueError(
                "With per-task designs, sample_weight must be a list with one 1-D array per task."
            )
        sw = np.concatenate([_check_sample_weight(s, Xc[t]) for t, s in enumerate(sample_weight)])
        check_weights(sw, task, T)
    y = np.concatenate(yc) if need_y else np.zeros(N)
    return PerTaskData(X=X, y=y, task=task, sample_weight=sw, n_tasks=T, sizes=sizes)


def check_weights(sw: np.ndarray, task: np.ndarray | None = None, T: int = 1) -> None:
    """Weights must be ≥ 0 with a positive sum in every task."""
    if np.any(sw < 0):
        raise ValueError("sample_weight must be non-negative.")
    tot = np.bincount(task, sw, minlength=T) if task is not None else np.array([sw.sum()])
    if np.any(tot <= 0):
        raise ValueError("sample_weight sums to zero (in some task); give every task some weight.")


def shared_weights(sample_weight: Any, X: Matrix) -> np.ndarray:
    sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
    check_weights(sw)
    return sw


def drop_zero_weights(
    X: Matrix, Y: np.ndarray, sw: np.ndarray, task: np.ndarray | None = None
) -> tuple[Matrix, np.ndarray, np.ndarray, np.ndarray | None]:
    """Remove rows with zero weight (their dual variable would be undefined)."""
    keep = sw > 0
    if keep.all():
        return X, Y, sw, task
    X = X[keep] if not sp.issparse(X) else sp.csr_matrix(X)[keep]
    return X, Y[keep], sw[keep], None if task is None else task[keep]


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not np.isfinite(float(value))
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)


def check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}.")
    return int(value)


__all__ = [
    "PerTaskData",
    "check_consistent_length",
    "check_int",
    "check_per_task",
    "check_positive",
    "drop_zero_weights",
    "is_per_task",
    "shared_weights",
    "split_pairs",
]
