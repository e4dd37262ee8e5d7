"""Every script in examples/ runs to the end at reduced length (TASKGRAD_EXAMPLE_SMOKE=1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskgrad.lightning import lightning_available

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NEEDS_LIGHTNING = {"lightning_multimnist.py"}
COVERED_BELOW = {"lightning_multimnist.py"}  # run (twice: fit, then resume) by its own test


def _run(script: Path, *args: str) -> str:
    # the compiled kernels run as Python: their compile time is not what these runs test
    env = {
        **os.environ,
        "TASKGRAD_EXAMPLE_SMOKE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "NUMBA_DISABLE_JIT": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_to_the_end(script, tmp_path):
    if script.name in COVERED_BELOW:
        pytest.skip("run by test_lightning_example_checkpoints_and_resumes")
    if script.name in NEEDS_LIGHTNING and not lightning_available():
        pytest.skip("pytorch-lightning not installed (optional extra)")
    _run(script, "--out", str(tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.skipif(
    not lightning_available(), reason="pytorch-lightning not installed (optional extra)"
)
def test_lightning_example_checkpoints_and_resumes(tmp_path):
    script = ROOT / "examples" / "lightning_multimnist.py"
    out = tmp_path / "out"
    first = _run(script, "--out", str(out), "--epochs", "1", "--method", "famo")
    assert "no weights, cosines or Gram statistics to plot" in first  # 4 steps < every=5: a message
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    import torch

    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and state["taskgrad"]["step"]["method"]["type"] == "FAMO"
    _run(
        script, "--out", str(out), "--epochs", "2", "--method", "famo", "--resume", "--clip", "1.0"
    )
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 8  # continued, not restarted


@pytest.mark.slow
@pytest.mark.skipif(
    not lightning_available(), reason="pytorch-lightning not installed (optional extra)"
)
def test_lightning_example_under_ddp_reports_the_same_validation_metrics_on_every_rank(tmp_path):
    """Two gloo processes: the validation accuracies are synchronized (sync_dist), so both ranks
    print the same numbers (each rank alone would see only its half of the validation set)."""
    script = ROOT / "examples" / "lightning_multimnist.py"
    out = _run(
        script,
        "--out",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--devices",
        "2",
        "--strategy",
        "ddp",
    )
    # the two ranks print at the same time: their lines may run together, so find each dict
    lines = re.findall(r"\{'val/acc_left'[^}]*\}", out)
    assert len(lines) == 2 and lines[0] == lines[1], out
