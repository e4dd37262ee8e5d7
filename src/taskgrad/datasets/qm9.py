"""QM9 (Ramakrishnan et al., 2014) from the PyPI package ``qm9pack``: 130,831 molecules with
B3LYP/6-31G(2df,p) geometries and properties, read offline and cached.

Source: ``pip install --no-deps qm9pack`` ships ``qm9pack/data/qm9_part{1,2,3}.csv`` (one row per
molecule; columns ``Index``, ``Elements`` like ``"['C','H',...]"``, ``XYZ_Ang`` like
``"[[x,y,z],...]"`` in Å, and the properties in the units of the original article). The package is
found, never imported. Pass a directory holding such CSVs or one CSV file to use other files.

Targets: the 11 regression targets of the Nash-MTL / FAMO protocol (PyTorch Geometric's QM9
targets 0-10) in PyG's units: mu (D), alpha (a0³), homo, lumo, gap (eV), r2 (a0²), zpve (eV),
U0, U, H, G (total energies, eV); hartree → eV with 1 Ha = 27.211386246 eV.
Split: a permutation of the molecules (sorted by their QM9 index) drawn from
``numpy.random.default_rng(seed)``: the first 110,000 train, the next 10,000 validation, the rest
(10,831) test; ``subset`` keeps only the first ``subset`` training molecules for quick runs.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ELEMENTS",
    "HARTREE_TO_EV",
    "QM9Data",
    "TARGETS",
    "TARGET_UNITS",
    "find_qm9",
    "load_qm9",
    "parse_qm9_csv",
    "split_qm9",
]

HARTREE_TO_EV = 27.211386246
#: target name → (qm9pack column, factor to the stated unit, unit)
_COLUMNS: dict[str, tuple[str, float, str]] = {
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "a0^3"),
    "homo": ("HOMO_au", HARTREE_TO_EV, "eV"),
    "lumo": ("LUMO_au", HARTREE_TO_EV, "eV"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV, "eV"),
    "r2": ("R2_bohr2", 1.0, "a0^2"),
    "zpve": ("ZPVE_au", HARTREE_TO_EV, "eV"),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV, "eV"),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV, "eV"),  # (sic) the package's spelling
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV, "eV"),
}
TARGETS: tuple[str, ...] = tuple(_COLUMNS)
TARGET_UNITS: dict[str, str] = {k: v[2] for k, v in _COLUMNS.items()}
#: element symbol → atomic number (QM9 holds only H, C, N, O, F)
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_VERSION = 1


@dataclass(frozen=True)
class QM9Data:
    """Molecules stored flat: atom a of molecule m is row ``ptr[m] + a`` of ``z`` (N_atoms,) uint8
    atomic numbers and ``pos`` (N_atoms, 3) float32 Å; ``y`` (M, 11) float64 targets in the units
    of :data:`TARGET_UNITS` (columns in :data:`TARGETS` order); ``index`` (M,) QM9 ids.
    """

    z: np.ndarray
    pos: np.ndarray
    ptr: np.ndarray
    y: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def find_qm9() -> Path:
    """Directory of the CSVs inside an installed ``qm9pack`` (found, not imported)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            d = Path(loc) / "data"
            if all((d / f).is_file() for f in _FILES):
                return d
    raise FileNotFoundError(
        "QM9 not found: `pip install --no-deps qm9pack` (it ships the data as CSV), or pass the "
        "directory holding qm9_part*.csv, or one CSV file in the qm9pack format."
    )


def _csv_files(source: Path) -> list[Path]:
    if not source.exists():
        raise FileNotFoundError(
            f"{str(source)!r} does not exist: pass a qm9pack data directory or CSV file."
        )
    if source.is_file():
        return [source]
    files = sorted(source.glob("qm9_part*.csv"))
    if not files:
        raise FileNotFoundError(
            f"no qm9_part*.csv in {str(source)!r}: pass the qm9pack data directory or a CSV file."
        )
    return files


def _list(cell: str) -> list[str]:
    return [
        t
        for t in cell.replace("[", " ")
        .replace("]", " ")
        .replace("'", " ")
        .replace('"', " ")
        .split(",")
        if t.strip()
    ]


def parse_qm9_csv(
    text: str, where: str = "csv", progress: tuple[Any, Any] | None = None
) -> QM9Data:
    """Parse one CSV in the qm9pack format (header row + one row per molecule) into
    :class:`QM9Data`.

    ``progress`` is an optional ``(rich.progress.Progress, task_id)`` advanced once per row.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(
            f"{where}: empty file, expected a header row in the qm9pack format."
        ) from None
    need = ["Index", "Elements", "XYZ_Ang"] + [c for c, _, _ in _COLUMNS.values()]
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(
            f"{where}: columns {missing} are missing; is this a qm9pack CSV? header: "
            f"{header[:6]}..."
        )
    col = {c: header.index(c) for c in need}
    zs: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    ys: list[list[float]] = []
    idx: list[int] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{where}: line {line} has {len(row)} fields, the header has {len(header)}."
            )
        syms = [s.strip() for s in _list(row[col["Elements"]])]
        try:
            z = np.array([ELEMENTS[s] for s in syms], dtype=np.uint8)
        except KeyError as e:
            raise ValueError(
                f"{where}: line {line}: unknown element {e.args[0]!r} (QM9 has H, C, N, O, F)."
            ) from None
        xyz = np.array([float(t) for t in _list(row[col["XYZ_Ang"]])], dtype=np.float64)
        if z.size == 0 or xyz.size != 3 * z.size:
            raise ValueError(
                f"{where}: line {line}: {z.size} elements but {xyz.size} coordinates (expected 3 "
                "per atom)."
            )
        zs.append(z)
        poss.append(xyz.reshape(-1, 3))
        ys.append([float(row[col[c]]) * f for c, f, _ in _COLUMNS.values()])
        idx.append(int(row[col["Index"]]))
        if progress is not None:
            progress[0].advance(progress[1])
    if not idx:
        raise ValueError(f"{where}: no molecule rows after the header.")
    counts = np.array([len(z) for z in zs], dtype=np.int64)
    y = np.array(ys, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"{where}: non-finite target values.")
    return QM9Data(
        np.concatenate(zs),
        np.concatenate(poss).astype(np.float32),
        np.concatenate([[0], np.cumsum(counts)]),
        y,
        np.array(idx, dtype=np.int64),
    )


def _concat(parts: list[QM9Data]) -> QM9Data:
    offs = np.cumsum([0] + [p.ptr[-1] for p in parts[:-1]])
    ptr = np.concatenate([[0]] + [p.ptr[1:] + o for p, o in zip(parts, offs, strict=True)])
    d = QM9Data(
        np.concatenate([p.z for p in parts]),
        np.concatenate([p.pos for p in parts]),
        ptr,
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.index for p in parts]),
    )
    order = np.argsort(d.index, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return d
    if len(np.unique(d.index)) != len(d.index):
        raise ValueError("duplicate molecule indices across the CSV files.")
    counts = np.diff(d.ptr)[order]
    atom = np.concatenate([np.arange(d.ptr[m], d.ptr[m + 1]) for m in order])
    return QM9Data(
        d.z[atom], d.pos[atom], np.concatenate([[0], np.cumsum(counts)]), d.y[order], d.index[order]
    )


def _default_cache_dir() -> Path:
    return Path(os.environ.get("TASKGRAD_CACHE", Path.home() / ".cache" / "taskgrad"))


def load_qm9(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> QM9Data:
    """QM9 molecules and the 11 targets (see the module docstring), sorted by QM9 index.

    The first call parses the CSVs (a minute or two, with a progress bar) and caches the arrays as
    ``<cache_dir>/qm9/qm9-v1-<hash>.npz`` (``cache_dir``: ``$TASKGRAD_CACHE`` or ~/.cache/taskgrad),
    keyed by the files' paths, sizes and modification times.
    """
    files = _csv_files(find_qm9() if source is None else Path(source))
    key = hashlib.sha1(
        repr(
            [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files] + [_VERSION]
        ).encode()
    ).hexdigest()[:12]
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = cache / "qm9" / f"qm9-v{_VERSION}-{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return QM9Data(f["z"], f["pos"], f["ptr"], f["y"], f["index"])
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    texts = [f.read_text() for f in files]
    total = sum(max(t.count("\n") - 1, 0) for t in texts)
    with Progress(
        TextColumn("building QM9 graphs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        tid = bar.add_task("qm9", total=total)
        parts = [parse_qm9_csv(t, str(f), (bar, tid)) for t, f in zip(texts, files, strict=True)]
    data = _concat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, z=data.z, pos=data.pos, ptr=data.ptr, y=data.y, index=data.index)
    os.replace(tmp, path)
    return data


def split_qm9(
    n: int, seed: int = 0, n_train: int = 110_000, n_val: int = 10_000, subset: int = 0
) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} molecule indices: a permutation π from ``default_rng(seed)``;
    train = π[:n_train] (its first ``subset`` when subset > 0), val = the next n_val, test = the
    rest.
    """
    if n_train < 1 or n_val < 0 or n_train + n_val >= n:
        raise ValueError(
            f"n_train={n_train} + n_val={n_val} must leave a test set out of {n} molecules "
            "(n_train ≥ 1, n_val ≥ 0, n_train + n_val < n)."
        )
    if subset < 0:
        raise ValueError(f"subset must be ≥ 0 (0: the whole training split), got {subset}.")
    perm = np.random.default_rng(seed).permutation(n)
    train = perm[:n_train]
    if subset:
        train = train[:subset]
    return {"train": train, "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
