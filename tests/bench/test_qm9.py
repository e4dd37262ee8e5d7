"""QM9 on tiny generated molecules only (never the real data): the qm9pack CSV parser, the seeded
split, graph batching and the MPNN's invariances, and the harness on the qm9 problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskgrad.bench.problems.qm9 import U0_FIRST, Molecules, QM9Problem
from taskgrad.datasets.qm9 import (
    HARTREE_TO_EV,
    TARGETS,
    QM9Data,
    load_qm9,
    parse_qm9_csv,
    split_qm9,
)
from taskgrad.models.mpnn import MPNN, GraphBatch, radius_edges

_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K"
)
_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def _row(index: int, z: list[int], pos: np.ndarray, props: list[float]) -> str:
    """One molecule in the qm9pack layout (quoted list cells, properties in the package's units)."""
    els = "[" + ",".join(f"'{_SYMBOLS[a]}'" for a in z) + "]"
    xyz = "[" + ",".join("[" + ",".join(repr(float(c)) for c in p) + "]" for p in pos) + "]"
    cells = [
        f'"dsgdb9nsd_{index:06d}.xyz"',
        str(index),
        '"C"',
        '"InChI=1S/x"',
        str(len(z)),
        '"[0,0,0,0,0]"',
        f'"{els}"',
        f'"{xyz}"',
        '"[0.1]"',
        '"[1.0]"',
        "1.",
        "2.",
        "3.",
    ]
    cells += [repr(float(v)) for v in props] + ["6.5"]
    return ",".join(cells)


def _molecules(n: int, seed: int = 0) -> tuple[list[tuple[list[int], np.ndarray]], np.ndarray]:
    rng = np.random.default_rng(seed)
    mols, props = [], []
    for _ in range(n):
        k = int(rng.integers(1, 7))
        z = [int(a) for a in rng.choice([1, 6, 7, 8, 9], size=k)]
        mols.append((z, rng.normal(scale=1.5, size=(k, 3)).round(6)))
        props.append(rng.normal(size=11))
    return mols, np.array(props)


def _csv(mols: list[tuple[list[int], np.ndarray]], props: np.ndarray, first_index: int = 1) -> str:
    rows = [_row(first_index + i, z, p, list(props[i])) for i, (z, p) in enumerate(mols)]
    return _HEADER + "\n" + "\n".join(rows) + "\n"


def test_parser_reads_the_qm9pack_format_and_converts_units() -> None:
    mols, props = _molecules(4)
    d = parse_qm9_csv(_csv(mols, props))
    assert len(d) == 4 and d.index.tolist() == [1, 2, 3, 4]
    for m, (z, pos) in enumerate(mols):
        assert d.z[d.ptr[m] : d.ptr[m + 1]].tolist() == z
        np.testing.assert_allclose(d.pos[d.ptr[m] : d.ptr[m + 1]], pos, atol=1e-6)
    # Debye, bohr^3 and bohr^2 unchanged; hartree → eV for homo, lumo, gap, zpve, U0, U, H, G
    factor = np.array([1, 1] + [HARTREE_TO_EV] * 3 + [1] + [HARTREE_TO_EV] * 5)
    np.testing.assert_allclose(d.y, props * factor, rtol=1e-12)
    assert TARGETS == ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")


def test_parser_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="missing"):
        parse_qm9_csv("a,b,c\n1,2,3\n")
    mols, props = _molecules(1)
    bad = _csv(mols, props).replace("'H'", "'Xe'").replace("'C'", "'Xe'").replace("'N'", "'Xe'")
    bad = bad.replace("'O'", "'Xe'").replace("'F'", "'Xe'")
    with pytest.raises(ValueError, match="unknown element"):
        parse_qm9_csv(bad)


def test_load_from_directory_sorts_caches_and_matches_parse(tmp_path) -> None:
    mols, props = _molecules(6, seed=1)
    src = tmp_path / "data"
    src.mkdir()
    # two parts, written out of index order: the loader concatenates and sorts by QM9 index
    (src / "qm9_part1.csv").write_text(_csv(mols[3:], props[3:], first_index=4))
    (src / "qm9_part2.csv").write_text(_csv(mols[:3], props[:3], first_index=1))
    d = load_qm9(src, cache_dir=tmp_path / "cache", progress=False)
    ref = parse_qm9_csv(_csv(mols, props))
    for a, b in zip(
        (d.z, d.pos, d.ptr, d.y, d.index), (ref.z, ref.pos, ref.ptr, ref.y, ref.index), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert len(list((tmp_path / "cache" / "qm9").glob("*.npz"))) == 1
    again = load_qm9(src, cache_dir=tmp_path / "cache", progress=False)  # from the cache
    np.testing.assert_array_equal(again.pos, d.pos)


def test_split_is_seeded_disjoint_and_subset_is_a_prefix() -> None:
    a, b = (
        split_qm9(100, seed=3, n_train=60, n_val=10),
        split_qm9(100, seed=3, n_train=60, n_val=10),
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], split_qm9(100, seed=4, n_train=60, n_val=10)["train"])
    assert sorted(np.concatenate([a["train"], a["val"], a["test"]]).tolist()) == list(range(100))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (60, 10, 30)
    s = split_qm9(100, seed=3, n_train=60, n_val=10, subset=7)
    assert np.array_equal(s["train"], a["train"][:7]) and np.array_equal(s["test"], a["test"])
    with pytest.raises(ValueError, match="test set"):
        split_qm9(100, n_train=95, n_val=5)


def _batch(mols: list[tuple[list[int], np.ndarray]]) -> GraphBatch:
    return GraphBatch.from_molecules([(torch.tensor(z), torch.from_numpy(p)) for z, p in mols])


def test_radius_edges_match_a_per_molecule_loop() -> None:
    mols, _ = _molecules(8, seed=2)
    g = _batch(mols)
    src, dst, dist = radius_edges(g.pos, g.ptr, cutoff=2.0)
    got = sorted(zip(src.tolist(), dst.tolist(), strict=True))
    want = []
    for m in range(len(mols)):
        lo, hi = int(g.ptr[m]), int(g.ptr[m + 1])
        for i in range(lo, hi):
            for j in range(lo, hi):
                if i != j and float((g.pos[i] - g.pos[j]).norm()) < 2.0:
                    want.append((j, i))
    assert got == sorted(want)
    torch.testing.assert_close(dist, (g.pos[dst] - g.pos[src]).norm(dim=-1))


def test_embedding_is_invariant_to_atom_order_rotation_and_batch_company() -> None:
    torch.manual_seed(0)
    model = MPNN(n_tasks=3, hidden=16, n_layers=2, n_rbf=8, cutoff=3.0).double()
    mols, _ = _molecules(5, seed=5)
    mols = [(z, p) for z, p in mols if len(z) >= 2]
    assert len(mols) >= 2
    rng = np.random.default_rng(0)
    permuted = []
    for z, p in mols:
        perm = rng.permutation(len(z))
        if np.array_equal(perm, np.arange(len(z))):
            perm = perm[::-1].copy()  # a real permutation whenever the molecule has ≥ 2 atoms
        permuted.append(([z[i] for i in perm], p[perm]))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = [(z, p @ q.T + rng.normal(size=3)) for z, p in permuted]
    g = _batch(moved)
    g.pos = g.pos.double()
    ref = _batch(mols)
    ref.pos = ref.pos.double()
    z_ref, _ = model(ref)
    z_new, _ = model(g)
    torch.testing.assert_close(z_new, z_ref, rtol=1e-9, atol=1e-9)
    # each molecule alone gives the same embedding as inside the batch (no leak across graphs)
    for m, mol in enumerate(mols):
        one = _batch([mol])
        one.pos = one.pos.double()
        torch.testing.assert_close(model(one)[0][0], z_ref[m], rtol=1e-9, atol=1e-9)
    # and the embedding does depend on geometry (the test can fail)
    stretched = _batch([(z, 1.3 * p) for z, p in mols])
    stretched.pos = stretched.pos.double()
    assert not torch.allclose(model(stretched)[0], z_ref)


def test_molecules_indexing_gathers_the_right_atoms() -> None:
    mols, props = _molecules(7, seed=6)
    d = parse_qm9_csv(_csv(mols, props))
    store = Molecules.select(d.z, d.pos, d.ptr, np.array([5, 0, 3, 6]))  # a split, in split order
    g = store[torch.tensor([2, 0])]  # split rows 2 and 0: molecules 3 and 5
    want = _batch([mols[3], mols[5]])
    assert torch.equal(g.ptr, want.ptr) and torch.equal(g.z, want.z)
    torch.testing.assert_close(g.pos, want.pos)


def _tiny_problem_data(n: int = 40) -> QM9Data:
    mols, props = _molecules(n, seed=7)
    return parse_qm9_csv(_csv(mols, props))


def test_problem_standardizes_with_train_stats_and_reports_mae_in_units() -> None:
    d = _tiny_problem_data()
    p = QM9Problem(data=d, n_train=24, n_val=6, split_seed=1, tasks=U0_FIRST)
    split = split_qm9(len(d), 1, 24, 6)
    cols = [TARGETS.index(t) for t in U0_FIRST]
    y_tr = d.y[split["train"]][:, cols]
    torch.testing.assert_close(
        p.y["train"].double().mean(0), torch.zeros(11, dtype=torch.float64), atol=1e-6, rtol=0
    )
    np.testing.assert_allclose(p.std, y_tr.std(0))
    # a prediction of the training mean everywhere: MAE = mean |y − mean| in original units (meV for
    # energies)
    n = p.n("test")
    zeros = [torch.zeros(n, 1) for _ in p.tasks]
    sums = p.metric_sums(zeros, p.y["test"])
    y_te = d.y[split["test"]][:, cols]
    for i, t in enumerate(p.tasks):
        unit = 1000.0 if t in {"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"} else 1.0
        want = np.abs(y_te[:, i] - y_tr[:, i].mean()).mean() * unit
        assert float(sums[f"{t}/mae"]) / n == pytest.approx(want, rel=1e-4)
    assert p.tasks[0] == "U0" and [m.higher_is_better for m in p.metrics] == [False] * 11


def test_harness_runs_qm9_one_batch_and_two_epochs(tmp_path, monkeypatch) -> None:
    from taskgrad.bench import registry
    from taskgrad.bench.config import parse_config
    from taskgrad.bench.runner import run

    d = _tiny_problem_data()
    monkeypatch.setattr("taskgrad.datasets.qm9.load_qm9", lambda *a, **k: d)
    registry.clear_cache()
    raw = {
        "name": "qm9-tiny",
        "dataset": "qm9-u0",
        "methods": ["mean", {"name": "primary-aux", "label": "pa"}],
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 1,
        "source": "representation",
        "device": "cpu",
        "data": {"n_train": 24, "n_val": 6},
        "model": {"hidden": 8, "n_layers": 1, "n_rbf": 4},
    }
    cfg = parse_config(raw)
    for rc in cfg.runs:
        res = run(rc, tmp_path, show_progress=False)
        assert len(res["history"]) == 2 and res["history"][-1]["steps"] == 1
        assert res["tasks"][0] == "U0" and len(res["tasks"]) == 11
        assert all(
            math.isfinite(res["final"][f"{t}/mae"]) and res["final"][f"{t}/mae"] > 0
            for t in res["tasks"]
        )
    w = res["history"][0]["weight/U0"]
    assert w == pytest.approx(1.0, abs=1e-6)  # primary-aux always keeps the primary's weight at 1
