"""IDX loaders on tiny generated files, and every experiment config run for one batch."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from taskgrad.datasets.images import load_idx, load_idx_dataset, stratified_subset

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "benchmarks" / "applications"


def _write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        _write_idx(tmp_path / name, arr, compress)
    ds = load_idx_dataset(tmp_path)
    assert np.array_equal(ds.train_x, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert ds.train_y.dtype == np.int64


def test_idx_errors(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        load_idx(tmp_path / "bad")
    _write_idx(tmp_path / "trunc", np.zeros((4, 3), dtype=np.uint8), False)
    (tmp_path / "trunc").write_bytes((tmp_path / "trunc").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        load_idx(tmp_path / "trunc")
    with pytest.raises(FileNotFoundError):
        load_idx_dataset(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_idx_dataset(tmp_path)


def test_stratified_subset() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 50)
    a = stratified_subset(y, 100, rng)
    assert len(set(a.tolist())) == 100 and np.all(np.bincount(y[a], minlength=10) == 10)
    b = stratified_subset(y, 300, rng, exclude=a)
    assert not set(a.tolist()) & set(b.tolist())
    with pytest.raises(ValueError, match="available"):
        stratified_subset(y, 450, rng, exclude=a)


def _module(name: str):
    return importlib.import_module(f"benchmarks.applications.{name}")


CONFIGS = sorted((APPS / "configs").glob("*.json"))


def test_every_config_is_covered() -> None:
    assert CONFIGS, "no experiment config found"
    for path in CONFIGS:
        assert path.name.startswith(("weight_decay", "noisy_labels")), (
            f"{path.name} has no one-batch test"
        )


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
@pytest.mark.slow
def test_config_runs_one_batch(path: Path) -> None:
    """Each experiment config runs one step per method on tiny generated images (not the data)."""
    common = _module("common")
    config = json.loads(path.read_text())
    if path.name.startswith("weight_decay"):
        rows = _module("weight_decay").run(
            config, dataset=common.fake_dataset(), smoke=True, progress=False
        )
        methods = {r["method"] for r in rows}
        assert methods >= {m for m in config["methods"] if m != "adamw"}
    else:
        fakes = {d: common.fake_dataset(seed=i) for i, d in enumerate(config["datasets"])}
        rows = _module("noisy_labels").run(config, datasets=fakes, smoke=True, progress=False)
        assert {r["method"] for r in rows} == set(config["methods"])
    for r in rows:
        assert r["steps"] == 1 and 0.0 <= r["test_acc"] <= 1.0
