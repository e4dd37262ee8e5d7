"""Every config in benchmarks/configs runs to the end through `taskgrad bench`, at reduced length
(--set overrides: one seed, one epoch, two steps) on generated stand-ins of its data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskgrad.bench.config import load_config, read_config_file

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
SHIPPED = sorted(p for p in CONFIGS.iterdir() if p.suffix in (".toml", ".yaml", ".yml"))
SHORT = ["seeds=[0]", "epochs=1", "max_steps_per_epoch=2", "batch_size=8", "checkpoint_every=1000"]


def _data_overrides(dataset: str, fakes: dict[str, Path], cache: Path) -> list[str]:
    if dataset in ("multimnist", "multifashion"):
        return [f'data.root="{fakes["mnist"]}"', f'data.cache_dir="{cache}"']
    if dataset == "census":
        return [f'data.source="{fakes["census"]}"']
    if dataset in ("qm9", "qm9-u0"):
        return [
            f'data.source="{fakes["qm9"]}"',
            f'data.cache_dir="{cache}"',
            "data.n_train=30",
            "data.n_val=10",
            "data.subset=0",
            "data.n_test=0",
            "eval_batch_size=16",
        ]
    return []


def bench(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m taskgrad bench ...` in a subprocess (the command a user types)."""
    # the compiled kernels run as Python here: their compilation (up to ~20 s per process for
    # CAGrad) is not what these runs test, and the kernels themselves are tested in tests/methods
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        "NUMBA_DISABLE_JIT": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "taskgrad", "bench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_shipped_config_is_tested() -> None:
    names = {p.name for p in SHIPPED}
    assert {"toy.toml", "multimnist.toml", "census.toml", "qm9.toml"} <= names
    for p in SHIPPED:
        load_config(p)  # each one loads as shipped (every key checked)


@pytest.mark.slow
def test_every_shipped_config_runs_to_the_end(tmp_path, fake_mnist, fake_census, fake_qm9) -> None:
    fakes = {"mnist": fake_mnist, "census": fake_census, "qm9": fake_qm9}
    groups: dict[str, list[Path]] = {}
    for p in SHIPPED:
        dataset = str(read_config_file(p)["dataset"])  # one command per data set (same overrides)
        groups.setdefault(
            {"multifashion": "multimnist", "qm9-u0": "qm9"}.get(dataset, dataset), []
        ).append(p)
    out = tmp_path / "out"
    expected_runs = 0
    for dataset, paths in groups.items():
        if dataset == "toy2d":
            sets = [
                "toy.steps=150",
                "toy.record_every=10",
            ]  # long enough to reach nearly opposite gradients
        else:
            sets = SHORT + _data_overrides(dataset, fakes, tmp_path / "cache")
            expected_runs += sum(
                len([r for r in load_config(p, sets).runs if r.seed == 0]) for p in paths
            )
        args = (
            [str(p) for p in paths]
            + ["--out", str(out), "--quiet", "--no-plots"]
            + [f"--set={s}" for s in sets]
        )
        res = bench(*args, cwd=tmp_path, env={"TASKGRAD_CACHE": str(tmp_path / "cache")})
        assert res.returncode == 0, (
            f"{dataset}: {[p.name for p in paths]}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
        assert "Traceback" not in res.stderr
    results = list(out.rglob("result.json"))
    assert len(results) == expected_runs
    toy = json.loads((out / "toy" / "toy.json").read_text())
    assert toy["failed"] == {} and "famo" in toy["methods"]
    assert len(toy["methods"]) == len(load_config(CONFIGS / "toy.toml").methods)
