"""The census-income loader on a tiny generated file in the UCI layout (42 columns)."""

from __future__ import annotations

import numpy as np
import pytest

from taskgrad.datasets.census import N_COLS, NUMERIC, load_census


def _row(age: int, marital: str, cls: str, label: str) -> str:
    cells = ["x"] * N_COLS
    for c in NUMERIC:
        cells[c] = "0"
    cells[0], cells[7], cells[1], cells[24], cells[41] = str(age), marital, cls, "1000.5", label
    return ", ".join(cells)


def test_census_tasks_and_features(tmp_path) -> None:
    train = [
        _row(20, "Never married", "A", "- 50000."),
        _row(40, "Widowed", "B", "50000+."),
        _row(60, "Married-civilian spouse present", "A", "- 50000."),
    ]
    test = [_row(30, "Never married", "C", "50000+.")]
    (tmp_path / "census_income_1994_1995_train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "census_income_1994_1995_test.csv").write_text("\n".join(test) + "\n")
    d = load_census(tmp_path)
    assert d.train_y.tolist() == [[0, 1], [1, 0], [0, 0]] and d.test_y.tolist() == [[1, 1]]
    # age standardized with the training mean/std; class-of-worker one-hot over training categories
    age = d.feature_names.index("num0")
    assert d.train_x[:, age] == pytest.approx((np.array([20, 40, 60]) - 40) / np.std([20, 40, 60]))
    a, b = d.feature_names.index("c1=A"), d.feature_names.index("c1=B")
    assert d.train_x[:, [a, b]].tolist() == [[1, 0], [0, 1], [1, 0]]
    assert d.test_x[0, [a, b]].tolist() == [0, 0]  # unseen category "C": all zeros
    assert not any(n.startswith(("c7=", "c24=", "c41=")) for n in d.feature_names)  # no label leak


def test_census_bad_file_says_why(tmp_path) -> None:
    (tmp_path / "census_income_1994_1995_train.csv").write_text("1, 2, 3\n")
    (tmp_path / "census_income_1994_1995_test.csv").write_text("1, 2, 3\n")
    with pytest.raises(ValueError, match="expected 42"):
        load_census(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_census(tmp_path / "missing")
