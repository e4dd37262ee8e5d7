"""Tiny generated stand-ins for the benchmark data sets (never the real data), in the layouts the
loaders read: MNIST IDX files, the census-income CSVs and a qm9pack CSV; and a fixture that
registers a test problem for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taskgrad.bench import registry


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the four MNIST IDX files: 400 training and 100 test random 28×28 images, the
    ten classes equally often (an untrained model is right about one time in ten, so the
    validation and test accuracies that Δm divides by are not 0)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("t10k", 100)):
        _write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def census_row(age: int, marital: str, cls: str, label: str) -> str:
    """One row in the census-income layout (42 comma-separated columns)."""
    from taskgrad.datasets.census import N_COLS, NUMERIC

    cells = ["x"] * N_COLS
    for c in NUMERIC:
        cells[c] = "0"
    cells[0], cells[7], cells[1], cells[24], cells[41] = str(age), marital, cls, "1000.5", label
    return ", ".join(cells)


@pytest.fixture(scope="session")
def fake_census(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two census-income CSVs: 200 training and 40 test rows of random labels
    (both classes of both tasks in any validation carve of 10%)."""
    root = tmp_path_factory.mktemp("census")
    rng = np.random.default_rng(0)
    marital = ("Never married", "Widowed")
    labels = ("- 50000.", "50000+.")
    for name, n in (("train", 200), ("test", 40)):
        rows = [
            census_row(
                int(rng.integers(18, 80)),
                marital[i % 2],
                "AB"[int(rng.integers(2))],
                labels[int(rng.integers(2))],
            )
            for i in range(n)
        ]
        (root / f"census_income_1994_1995_{name}.csv").write_text("\n".join(rows) + "\n")
    return root


_QM9_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K"
)
_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def qm9_csv(n: int, seed: int = 0) -> str:
    """n random molecules (1–6 atoms, random targets) as a qm9pack CSV."""
    rng = np.random.default_rng(seed)
    rows = [_QM9_HEADER]
    for index in range(1, n + 1):
        k = int(rng.integers(1, 7))
        z = [int(a) for a in rng.choice([1, 6, 7, 8, 9], size=k)]
        pos = rng.normal(scale=1.5, size=(k, 3)).round(6)
        els = "[" + ",".join(f"'{_SYMBOLS[a]}'" for a in z) + "]"
        xyz = "[" + ",".join("[" + ",".join(repr(float(c)) for c in p) + "]" for p in pos) + "]"
        cells = [
            f'"dsgdb9nsd_{index:06d}.xyz"',
            str(index),
            '"C"',
            '"InChI=1S/x"',
            str(k),
            '"[0,0,0,0,0]"',
            f'"{els}"',
            f'"{xyz}"',
            '"[0.1]"',
            '"[1.0]"',
            "1.",
            "2.",
            "3.",
        ]
        cells += [repr(float(v)) for v in rng.normal(size=11)] + ["6.5"]
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="session")
def fake_qm9(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qm9pack CSV of 60 random molecules."""
    path = tmp_path_factory.mktemp("qm9") / "qm9.csv"
    path.write_text(qm9_csv(60))
    return path


@pytest.fixture
def add_problem() -> Iterator[Callable[..., None]]:
    """``add_problem(name, factory, tasks)`` registers a problem for this test only."""
    added: list[str] = []

    def add(name: str, factory: Callable[..., Any], tasks: list[str], **kw: Any) -> None:
        registry.register_problem(name, factory, tasks, "test", overwrite=True, **kw)
        added.append(name)

    yield add
    for name in set(added):
        registry.unregister_problem(name)


class Interrupted(Exception):
    """Raised from a run's ``on_step`` to stop it as a crash would."""


@pytest.fixture
def interrupted_then_resumed() -> Callable[..., tuple[dict[str, Any], dict[str, Any]]]:
    """``f(rc, tmp_path, at_step)``: run ``rc`` uninterrupted into tmp_path/a; run it into
    tmp_path/b, stopped by an exception at step ``at_step``, then again (resuming from its
    checkpoint); returns (uninterrupted result, resumed result)."""
    from taskgrad.bench import run

    def go(rc: Any, tmp_path: Path, at_step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        full = run(rc, tmp_path / "a", show_progress=False)

        def stop(step: int) -> None:
            if step == at_step:
                raise Interrupted

        with pytest.raises(Interrupted):
            run(rc, tmp_path / "b", show_progress=False, on_step=stop)
        return full, run(rc, tmp_path / "b", show_progress=False)

    return go
