"""The low-label auxiliary-learning protocols: every config runs one batch per method on small
generated data of its experiment's layout; the split keeps validation, labelled and unlabelled
examples apart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.applications import aux_lowlabel as al
from benchmarks.applications.aux_tasks import fake_multimnist, fake_parkinsons, fake_qm9
from benchmarks.applications.common import fake_dataset

BENCH = Path(al.__file__).resolve().parent
CONFIGS = sorted((BENCH / "configs" / "aux_lowlabel").glob("*.json"))
SMALL = {"n_val": 16, "n_test": 40, "batch_size": 16, "primary_batch_size": 8, "n_monitor": 32}


def _fake(kind: str):
    if kind == "multimnist":
        return fake_multimnist(n_train=160, n_test=40)
    if kind == "fashion_rotation":
        return fake_dataset(n_train=160, n_test=40)
    if kind == "qm9":
        return fake_qm9(n_molecules=300)
    return fake_parkinsons(n_patients=10, per_patient=20)


def test_every_low_label_protocol_has_a_config_with_every_method() -> None:
    kinds = {json.loads(p.read_text())["experiment"] for p in CONFIGS}
    assert kinds == set(al.KINDS)
    for p in CONFIGS:
        cfg = json.loads(p.read_text())
        assert len(cfg["seeds"]) == 5
        labels = [m["label"] for m in cfg["methods"]]
        for needed in (
            "primary-only",
            "sum",
            "cosine-gated",
            "pcgrad-aux",
            "ol-aux",
            "auxinash",
            "metabalance",
            "auto-lambda",
            "auxilearn",
            "pcd",
            "primary-aux",
        ):
            assert needed in labels, (p.name, needed)
        assert (
            sum(m["name"] == "primary-aux" and "progress" in m["kwargs"] for m in cfg["methods"])
            >= 3
        )


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem.startswith("qm9") else p for p in CONFIGS],
    ids=[p.stem for p in CONFIGS],
)
def test_config_runs_one_batch_per_method(path: Path) -> None:
    cfg = {**json.loads(path.read_text()), **SMALL}
    kind = cfg["experiment"]
    if kind in ("multimnist", "fashion_rotation"):
        cfg.update(n_labelled=24, n_train=160)
    elif kind == "qm9":
        cfg.update(n_train=200, label_fraction=0.2)
    else:
        cfg.update(n_test_patients=3, label_fraction=0.2)
    rows = al.run(cfg, data=_fake(kind), smoke=True)
    assert [r["method"] for r in rows] == [m["label"] for m in cfg["methods"]]
    for r in rows:
        assert math.isfinite(r["test_metric"]) and math.isfinite(r["test_metric_at_best_val"]), r[
            "method"
        ]
        assert len(r["frac_aux_positive"]) == (10 if kind == "qm9" else 1)
    text = al.summarize(rows, cfg)
    assert "primary-aux progress" in text


def test_split_keeps_validation_labelled_and_rest_apart() -> None:
    data = fake_multimnist(n_train=200, n_test=20)
    cfg = {"n_labelled": 30, "n_val": 20, "n_train": 200, "n_test": 20}
    s = al.make_split("multimnist", data, cfg, seed=3)
    assert s.labelled.tolist() == list(range(30))
    assert s.y.shape[0] == 180 and s.yv.shape[0] == 20
    # the 200 images are split without overlap: validation rows never reappear in training
    train = {tuple(x.flatten()[:40].tolist()) for x in s.x}
    assert not any(tuple(x.flatten()[:40].tolist()) in train for x in s.xv)
    again = al.make_split("multimnist", data, cfg, seed=3)
    assert torch.equal(again.x, s.x)  # paired by seed
    with pytest.raises(ValueError, match="n_labelled"):
        al.make_split("multimnist", data, {**cfg, "n_labelled": 190}, seed=0)


def test_rotation_labels_match_the_rotation() -> None:
    x = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    xr, r = al.rotate(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    for i in range(16):
        assert torch.equal(xr[i], torch.rot90(x[i % 2], int(r[i]), dims=(-2, -1)))


def test_paired_report_matches_scipy() -> None:
    from scipy.stats import ttest_rel

    rows = [
        {"method": m, "seed": s, "v": v}
        for m, vals in (("a", [1.0, 2.0, 4.0]), ("b", [0.5, 1.0, 3.0]))
        for s, v in enumerate(vals)
    ]
    txt = al.paired(rows, "a", "b", "v", 1.0)
    p = ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 3.0]).pvalue
    d = np.array([0.5, 1.0, 1.0])
    assert txt == f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} (p={p:.2g})"


def test_saved_rows_merge_into_the_same_summary_and_a_plot(tmp_path: Path) -> None:
    rows = [
        {
            "experiment": "parkinsons",
            "method": m,
            "seed": s,
            "steps": 10,
            "test_metric": v,
            "test_metric_at_best_val": v + 0.01 * s * len(m),
            "train_aux_first": 1.0,
            "train_aux_min": 0.5,
            "train_aux_last": 0.6,
            "frac_aux_positive": [0.5],
            "frac_infeasible": 0.0,
            "ms_per_step": 1.0,
        }
        for m, base in (("primary-only", 5.0), ("sum", 4.0), ("primary-aux", 4.5))
        for s, v in enumerate([base, base + 0.2, base - 0.1])
    ]
    cfg = {
        "experiment": "parkinsons",
        "name": "t",
        "methods": [{"label": m} for m in ("primary-only", "sum", "primary-aux")],
    }
    flat = [al._flat(r) for r in rows]
    (tmp_path / "a.json").write_text(json.dumps(flat[:3]))  # a primary-only check
    # the later run repeats primary-only seed 0 with another value: the later file wins
    later = [{**flat[0], "test_metric_at_best_val": 99.0}] + flat[3:]
    (tmp_path / "b.json").write_text(json.dumps(later))
    merged = al.load_rows([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(merged) == 9
    assert {r["test_metric_at_best_val"] for r in merged if r["method"] == "primary-only"} >= {99.0}
    expected = [{**rows[0], "test_metric_at_best_val": 99.0}] + rows[1:]
    assert al.summarize(merged, cfg) == al.summarize(expected, cfg)
    png = al.plot(merged, cfg, tmp_path / "t.png")
    assert png.stat().st_size > 1000


def test_aux_metric_correlation_is_scipys_spearman_over_method_means() -> None:
    from scipy.stats import spearmanr

    rows = [
        {"method": m, "seed": s, "train_aux_last": a + 0.1 * s, "test_metric_at_best_val": e - s}
        for m, a, e in (("x", 0.2, 5.0), ("y", 0.4, 6.5), ("z", 0.3, 6.0), ("w", 0.9, 6.2))
        for s in range(3)
    ]
    rho, p, n = al.aux_metric_correlation(rows)
    ref = spearmanr([0.2 + 0.1, 0.4 + 0.1, 0.3 + 0.1, 0.9 + 0.1], [4.0, 5.5, 5.0, 5.2])
    assert n == 4 and rho == pytest.approx(float(ref.statistic)) and p == pytest.approx(ref.pvalue)
    assert al.aux_metric_correlation(rows[:6]) is None  # two methods
