"""Tabular multi-task data sets with one task per group: School (MALSAR) and Parkinsons
telemonitoring.

Both loaders take the path of the file (nothing is downloaded) and return the tasks as a list of
(X_t, y_t) pairs, the per-task input form of :mod:`taskgrad.linear`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["TaskData", "load_parkinsons", "load_school"]


@dataclass
class TaskData:
    """Tasks t = 1..T with their own samples: ``tasks[t] = (X_t (n_t, p), y_t (n_t,) or (n_t,
    k))``.
    """

    tasks: list[tuple[np.ndarray, np.ndarray]]
    feature_names: list[str]
    target_names: list[str]
    task_ids: list

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_samples(self) -> int:
        return sum(x.shape[0] for x, _ in self.tasks)


def _check_path(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found at {path!r}; pass the path of the file.")
    return path


def load_school(path: str | os.PathLike) -> TaskData:
    """Inner London Education Authority school data in the MALSAR layout (``school.mat``).

    The MATLAB file holds cell arrays ``X`` (1×139, each n_t × 28) and ``Y`` (1×139, each n_t × 1,
    exam scores); task t is school t (15,362 students in all). Features are returned as float64,
    as stored (MALSAR's 27 one-hot/ordinal columns plus a constant column).
    """
    from scipy.io import loadmat

    m = loadmat(_check_path(path, "school.mat"))
    if "X" not in m or "Y" not in m:
        raise ValueError(f"{path!r} has no cell arrays 'X' and 'Y'; is it MALSAR's school.mat?")
    Xc, Yc = np.ravel(m["X"]), np.ravel(m["Y"])
    if Xc.shape != Yc.shape:
        raise ValueError(f"X has {Xc.size} cells but Y has {Yc.size} in {path!r}.")
    tasks = []
    for t, (x, y) in enumerate(zip(Xc, Yc, strict=True)):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"School {t}: {x.shape[0]} rows in X but {y.shape[0]} in Y.")
        tasks.append((x, y))
    p = tasks[0][0].shape[1]
    return TaskData(tasks, [f"x{j}" for j in range(p)], ["exam_score"], list(range(len(tasks))))


def load_parkinsons(
    path: str | os.PathLike, target: str = "total_UPDRS", drop: tuple[str, ...] = ("test_time",)
) -> TaskData:
    """UCI Parkinsons telemonitoring (``parkinsons_updrs.data``) with one task per patient.

    The CSV has a header; ``subject#`` defines the 42 tasks, ``target`` ('total_UPDRS',
    'motor_UPDRS' or 'both' for an (n_t, 2) target) is y, and the remaining columns except
    ``drop`` (by default ``test_time``) are the features (age, sex and 16 voice measures).
    """
    path = _check_path(path, "parkinsons_updrs.data")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], [r for r in rows[1:] if r]
    names = ["motor_UPDRS", "total_UPDRS"]
    if target not in (*names, "both"):
        raise ValueError(f"target must be 'total_UPDRS', 'motor_UPDRS' or 'both', got {target!r}.")
    for col in ("subject#", *names):
        if col not in header:
            raise ValueError(f"Column {col!r} missing from {path!r}; is it parkinsons_updrs.data?")
    data = np.asarray(body, dtype=np.float64)
    subj = data[:, header.index("subject#")].astype(int)
    tcols = names if target == "both" else [target]
    feats = [c for c in header if c not in ("subject#", *names, *drop)]
    Xall = data[:, [header.index(c) for c in feats]]
    Yall = data[:, [header.index(c) for c in tcols]]
    tasks, ids = [], []
    for s in np.unique(subj):
        rows_s = subj == s
        y = Yall[rows_s]
        tasks.append((Xall[rows_s], y[:, 0] if y.shape[1] == 1 else y))
        ids.append(int(s))
    return TaskData(tasks, feats, tcols, ids)
