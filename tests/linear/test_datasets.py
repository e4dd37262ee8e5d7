"""Loaders of the tabular multi-task data sets (real files when present, tiny written ones)."""

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from taskgrad.datasets.tabular import load_parkinsons, load_school

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_school_roundtrip(tmp_path):
    X = np.empty((1, 2), dtype=object)
    Y = np.empty((1, 2), dtype=object)
    X[0, 0], Y[0, 0] = np.arange(6.0).reshape(3, 2), np.array([[1.0], [2.0], [3.0]])
    X[0, 1], Y[0, 1] = np.ones((2, 2)), np.array([[4.0], [5.0]])
    savemat(tmp_path / "s.mat", {"X": X, "Y": Y})
    d = load_school(tmp_path / "s.mat")
    assert d.n_tasks == 2 and d.n_samples == 5
    np.testing.assert_array_equal(d.tasks[0][0], X[0, 0])
    np.testing.assert_array_equal(d.tasks[1][1], [4.0, 5.0])


def test_parkinsons_roundtrip(tmp_path):
    f = tmp_path / "p.data"
    f.write_text(
        "subject#,age,sex,test_time,motor_UPDRS,total_UPDRS,a,b\n"
        "1,70,0,1.0,10,20,0.5,0.6\n2,60,1,2.0,11,21,0.7,0.8\n1,70,0,3.0,12,22,0.9,1.0\n"
    )
    d = load_parkinsons(f)
    assert d.task_ids == [1, 2] and d.feature_names == ["age", "sex", "a", "b"]
    np.testing.assert_array_equal(d.tasks[0][1], [20, 22])
    assert load_parkinsons(f, target="both").tasks[1][1].shape == (1, 2)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_parkinsons(tmp_path / "missing.data")
    with pytest.raises(ValueError, match="target must be"):
        load_parkinsons(f, target="x")


@pytest.mark.skipif(not (DATA / "school.mat").exists(), reason="shared data not present")
def test_real_files():
    s = load_school(DATA / "school.mat")
    assert s.n_tasks == 139 and s.n_samples == 15362 and s.tasks[0][0].shape[1] == 28
    p = load_parkinsons(DATA / "parkinsons_updrs.data")
    assert p.n_tasks == 42 and p.n_samples == 5875
