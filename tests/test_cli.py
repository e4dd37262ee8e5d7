"""The `taskgrad` command as a user runs it (a subprocess): messages instead of tracebacks, exit
statuses, failures that keep the other results, resumable interruptions, and what it prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NUMBA_DISABLE_JIT": "1"}


def taskgrad(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskgrad", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TOY = """name = "toy"
dataset = "toy2d"
kind = "toy"
methods = {methods}
[toy]
steps = 5
record_every = 1
"""

SYNTHETIC = """name = "syn"
dataset = "synthetic"
methods = ["mean", "mgda"]
single_task = true
epochs = {epochs}
batch_size = 16
device = "cpu"
checkpoint_every = 1
[data]
n_train = 64
n_test = 32
"""


@pytest.mark.slow
def test_version() -> None:
    res = taskgrad("--version")
    assert res.returncode == 0 and res.stdout.strip().startswith("taskgrad ")
    from taskgrad import __version__

    assert __version__ in res.stdout


@pytest.mark.slow
def test_methods_show_parameters_and_one_method_in_full() -> None:
    listing = taskgrad("methods")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    cagrad = next(i for i, line in enumerate(lines) if line.startswith("cagrad "))
    assert "parameters:" in lines[cagrad + 1] and "c=" in lines[cagrad + 1]
    one = taskgrad("methods", "cagrad")
    assert one.returncode == 0, one.stderr
    assert "cagrad" in one.stdout and "0.4" in one.stdout and "paper" in one.stdout.lower()
    typo = taskgrad("methods", "pcgard")
    assert typo.returncode == 2 and "pcgrad" in typo.stderr and "Traceback" not in typo.stderr


@pytest.mark.slow
def test_demo_options_have_help() -> None:
    res = taskgrad("demo", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "--steps STEPS SGD steps" in text and "--lr LR learning rate" in text


@pytest.mark.slow
def test_report_of_a_missing_path_says_it_does_not_exist(tmp_path) -> None:
    res = taskgrad("report", str(tmp_path / "missing.csv"))
    assert res.returncode == 2
    assert "missing.csv' does not exist" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_typo_in_data_fails_at_load_also_in_a_dry_run(tmp_path) -> None:
    cfg = write(
        tmp_path / "c.toml", SYNTHETIC.format(epochs=1).replace("n_train = 64", "n_trian = 64")
    )
    res = taskgrad("bench", str(cfg), "--dry-run", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        "unknown key 'n_trian' in [data]" in res.stderr and "Did you mean 'n_train'?" in res.stderr
    )


@pytest.mark.slow
def test_one_failing_toy_method_keeps_the_others_and_fails_at_the_end(tmp_path) -> None:
    """FAMO without lower bounds fails on the toy (its losses go negative): the other methods are
    saved and reported, the failure is named, and the exit status says something failed."""
    cfg = write(tmp_path / "toy.toml", TOY.format(methods='["mean", "famo", "mgda"]'))
    out = tmp_path / "out"
    dry = taskgrad("bench", str(cfg), "--dry-run", "--out", str(out))
    assert dry.returncode == 1 and "famo" in dry.stdout and "min_losses" in dry.stdout
    assert not out.exists()  # a dry run writes nothing
    res = taskgrad("bench", str(cfg), "--out", str(out), "--quiet", "--no-plots")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    data = json.loads((out / "toy" / "toy.json").read_text())
    assert list(data["methods"]) == ["mean", "mgda"] and "min_losses" in data["failed"]["famo"]
    assert "1 run failed" in res.stdout and "toy/famo" in res.stdout
    assert "failed: ValueError" in (out / "report.md").read_text()


@pytest.mark.slow
def test_toy_with_famo_bounds_methods_filter_and_reuse(tmp_path) -> None:
    cfg = write(
        tmp_path / "toy.toml",
        TOY.format(methods='["mean", {name = "famo", label = "famo", min_losses = [-3.0, -25.0]}]'),
    )
    out = tmp_path / "out"
    first = taskgrad(
        "bench", str(cfg), "--out", str(out), "--quiet", "--no-plots", "--methods", "famo"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert list(json.loads((out / "toy" / "toy.json").read_text())["methods"]) == ["famo"]
    both = taskgrad("bench", str(cfg), "--out", str(out), "--quiet", "--no-plots")
    assert both.returncode == 0 and "reused saved trajectories of famo" in both.stdout
    saved = json.loads((out / "toy" / "toy.json").read_text())["methods"]
    again = taskgrad("bench", str(cfg), "--out", str(out), "--quiet", "--no-plots")
    assert "reused saved trajectories of mean, famo" in again.stdout
    assert (
        json.loads((out / "toy" / "toy.json").read_text())["methods"] == saved
    )  # nothing recomputed
    typo = taskgrad("bench", str(cfg), "--out", str(out), "--methods", "famoo")
    assert typo.returncode == 2 and "did you mean 'famo'?" in typo.stderr


@pytest.mark.slow
def test_bench_prints_the_table_and_names_folders_without_colons(tmp_path) -> None:
    cfg = write(tmp_path / "c.toml", SYNTHETIC.format(epochs=1))
    out = tmp_path / "out"
    res = taskgrad("bench", str(cfg), "--out", str(out), "--quiet", "--no-plots")
    assert res.returncode == 0, res.stdout + res.stderr
    table = res.stdout.split("report:")[0]
    assert "Δm% ↓" in table and "mgda" in table and "reg/mse" in table
    assert "± 0.00" not in table  # one seed: the values alone, no "± 0.0000"
    assert sorted(p.name for p in (out / "syn").iterdir()) == [
        "mean",
        "mgda",
        "single-task-cls",
        "single-task-reg",
    ]
    rebuilt = taskgrad("report", str(out), "--no-plots")
    assert rebuilt.returncode == 0 and "Δm% ↓" in rebuilt.stdout and "mgda" in rebuilt.stdout
    # a folder of an older version (label with a colon) is still read: renamed back, nothing is
    # recomputed
    (out / "syn" / "single-task-reg").rename(out / "syn" / "single-task:reg")
    again = taskgrad("bench", str(cfg), "--out", str(out), "--no-plots")
    assert again.returncode == 0 and "epoch 1/1" not in again.stdout
    assert not (out / "syn" / "single-task-reg").exists()
    # a changed config recomputes and warns in one plain line (no source line of the warning)
    changed = taskgrad(
        "bench", str(cfg), "--out", str(out), "--quiet", "--no-plots", "--set", "data.n_test=16"
    )
    assert (
        changed.returncode == 0
        and "warning: syn/mean/seed0: the saved result.json is of another config" in changed.stderr
    )
    assert "warnings.warn" not in changed.stderr and ".py:" not in changed.stderr


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(tmp_path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        SYNTHETIC.format(epochs=150)
        .replace('["mean", "mgda"]', '["mean"]')
        .replace("single_task = true", "single_task = false"),
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "taskgrad", "bench", str(cfg), "--out", str(out), "--no-plots"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "syn" / "mean" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err
    res = subprocess.run(cmd + ["--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "syn" / "mean" / "seed0" / "result.json").read_text())
    assert result["resumed"] == 1 and len(result["history"]) == 150


@pytest.mark.slow
def test_a_method_failing_in_training_is_caught_by_the_dry_run_and_loses_no_other_run(
    tmp_path,
) -> None:
    """FAMO with lower bounds above the losses fails at its first step: --dry-run (which builds
    every run and takes one step) says so and writes nothing; the real run keeps the others."""
    cfg = write(
        tmp_path / "c.toml",
        SYNTHETIC.format(epochs=1).replace(
            '["mean", "mgda"]',
            '["mean", {name = "famo", label = "famo", min_losses = [50.0, 50.0]}]',
        ),
    )
    out = tmp_path / "out"
    dry = taskgrad("bench", str(cfg), "--dry-run", "--out", str(out))
    assert (
        dry.returncode == 1
        and "syn/famo/seed0: ValueError" in dry.stdout
        and "min_losses" in dry.stdout
    )
    assert "syn/mean/seed0" in dry.stdout and not out.exists()
    res = taskgrad("bench", str(cfg), "--out", str(out), "--quiet", "--no-plots")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert (out / "syn" / "mean" / "seed0" / "result.json").is_file()
    assert not (out / "syn" / "famo" / "seed0" / "result.json").exists()
    assert (
        "| mean |" in (out / "report.md").read_text() and "syn/famo/seed0: ValueError" in res.stdout
    )


def test_the_dry_run_line_shows_the_label_settings_that_are_set() -> None:
    from taskgrad.bench import parse_config
    from taskgrad.cli import _run_line

    base = {"name": "syn", "dataset": "synthetic", "methods": ["pcgrad-aux"], "device": "cpu"}
    plain = _run_line(parse_config(base).runs[0])
    assert "label" not in plain and "absent_primary" not in plain
    labelled = {
        **base,
        "label_fractions": {"cls": 0.05},
        "label_counts": {"reg": 20},
        "label_seed": 3,
        "absent_primary": "mean",
    }
    line = _run_line(parse_config(labelled).runs[0])
    assert line.startswith("syn/pcgrad-aux/seed0  epochs=1 ")
    assert line.endswith(
        "label_fractions={cls=0.05} label_counts={reg=20} label_seed=3 absent_primary=mean"
    )
    # the rule for a batch without the primary's label is shown whenever labels are removed
    skip = _run_line(parse_config({**base, "label_fractions": {"reg": 0.5}}).runs[0])
    assert skip.endswith("label_fractions={reg=0.5} absent_primary=skip")
    # without removed labels, a rule other than "skip" is shown too
    rule = _run_line(parse_config({**base, "absent_primary": "mean"}).runs[0])
    assert rule.endswith("selection=last absent_primary=mean")


@pytest.mark.slow
def test_the_dry_run_lists_the_label_settings_of_each_run(tmp_path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        SYNTHETIC.format(epochs=1).replace(
            'device = "cpu"',
            'device = "cpu"\nlabel_fractions = {cls = 0.25}\nlabel_seed = 7\n'
            'absent_primary = "mean"',
        ),
    )
    dry = taskgrad("bench", str(cfg), "--dry-run", "--out", str(tmp_path / "out"))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    lines = [line for line in dry.stdout.splitlines() if "/seed0" in line]
    assert len(lines) == 4  # mean, mgda and the two single-task baselines
    for line in lines:
        assert "label_fractions={cls=0.25} label_seed=7 absent_primary=mean: ok" in line, line
