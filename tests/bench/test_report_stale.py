"""Stale saved runs are never mixed in silently, on tiny generated data.

The report, against a config (``report(..., configs=)``, ``taskgrad report DIR --config``, the end
of ``taskgrad bench``): a run whose saved fingerprint is not the one the config gives its
(experiment, label, seed) is left out of the tables and listed as stale; without a config, runs of
one experiment trained under different protocols are split the same way (the protocol of the
newest result is kept). The runner: recomputing a saved result of another config warns
(``StaleResultWarning``), with and without progress output.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from taskgrad.bench import parse_config, run
from taskgrad.bench.metrics import delta_m


def _raw(**over):
    raw = {
        "name": "tiny",
        "dataset": "synthetic",
        "methods": ["mean", "mgda"],
        "seeds": [0],
        "epochs": 1,
        "batch_size": 32,
        "single_task": True,
        "data": {"n_train": 32, "n_test": 16},
        "optimizer": {"name": "sgd", "lr": 0.05},
    }
    raw.update(over)
    return raw


def _train(cfg, out, labels=None):
    return [
        run(r, out, show_progress=False)
        for r in cfg.runs
        if labels is None or r.label in labels or r.is_single_task
    ]


def _cli_toml(name: str, methods: list[str], single_task: bool = False) -> str:
    """A tiny synthetic TOML config with an ``{epochs}`` field to fill (changing it makes runs
    stale).
    """
    return (
        f'name = "{name}"\ndataset = "synthetic"\nmethods = {json.dumps(methods)}\nepochs = '
        f"{{epochs}}\n"
        "batch_size = 32\n"
        + ("single_task = true\n" if single_task else "")
        + '[optimizer]\nname = "sgd"\nlr = 0.05\n[data]\nn_train = 32\nn_test = 16\n'
    )


def _table_labels(md: str, experiment: str = "tiny") -> list[str]:
    """Method labels of the rows of ``experiment``'s table (not of the stale section)."""
    lines = md.split(f"### {experiment}\n", 1)[1].lstrip("\n").splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return [line.split("|")[1].strip() for line in table[2:]]


def _set_mtime(out, run_id: str, t: float) -> None:
    os.utime(out / run_id / "result.json", (t, t))


def _changed_config_on_disk(out):
    """Config A (1 epoch) trained in full, then config B (2 epochs) with `--methods mean` only:
    the saved mgda result is of A, every other run of B."""
    a, b = parse_config(_raw()), parse_config(_raw(epochs=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recompute warnings are tested below
        _train(a, out)
        new = _train(b, out, labels={"mean"})
    for i, r in enumerate(a.runs):  # deterministic order of writing: A's runs older than B's
        _set_mtime(out, r.run_id, 1_000_000 + i)
    for i, r in enumerate(new):
        _set_mtime(out, r["run_id"], 2_000_000 + i)
    return a, b, new


# ------------------------------------------------------------------ report against a config
@pytest.mark.slow
def test_report_against_a_config_excludes_the_stale_run_and_says_so(tmp_path) -> None:
    from taskgrad.bench.report import report

    _, b, new = _changed_config_on_disk(tmp_path)
    md = report(tmp_path, configs=[b]).read_text()
    assert sorted(_table_labels(md)) == ["mean", "single-task:cls", "single-task:reg"]
    stale = md.split("stale runs (another config; rerun with taskgrad bench", 1)[1]
    assert "tiny/mgda/seed0" in stale and "epochs" in stale
    summary = json.loads((tmp_path / "report.json").read_text())
    exp = summary["experiments"]["tiny"]
    assert summary["excluded_stale"] == 1 and exp["excluded_stale"] == 1 and exp["runs"] == 3
    assert [s["run_id"] for s in exp["stale_runs"]] == ["tiny/mgda/seed0"]
    # Δm of the table is that of config B's runs alone (the formula on the saved numbers)
    specs = {s["key"]: s["higher_is_better"] for s in new[0]["metric_specs"]}
    base = {
        "reg/mse": next(r for r in new if r["config"]["method"] == "single-task:0")["final"][
            "reg/mse"
        ],
        "cls/acc": next(r for r in new if r["config"]["method"] == "single-task:1")["final"][
            "cls/acc"
        ],
    }
    mean = next(r for r in new if r["config"]["method"] == "mean")
    row = next(r for r in exp["rows"] if r["label"] == "mean")
    assert row["delta_m"][0] == pytest.approx(delta_m(mean["final"], base, specs))


@pytest.mark.slow
def test_a_run_outside_the_config_is_kept_only_with_the_same_protocol(tmp_path) -> None:
    """mgda is no longer in the config: its old result is comparable (kept) while the settings are
    those of the config, and stale once they differ."""
    from taskgrad.bench.report import report

    _train(parse_config(_raw()), tmp_path)
    same = parse_config(_raw(methods=["mean"]))
    md = report(tmp_path, configs=[same]).read_text()
    assert "mgda" in _table_labels(md) and "stale runs" not in md
    assert json.loads((tmp_path / "report.json").read_text())["excluded_stale"] == 0
    other = parse_config(_raw(methods=["mean"], optimizer={"name": "sgd", "lr": 0.1}))
    md = report(tmp_path, configs=[other]).read_text()
    # every saved run is of lr 0.05: nothing is left in the table, all four are listed as stale
    assert "stale runs" in md and "lr" in md.split("stale runs", 1)[1]
    assert _table_labels(md) == []
    assert json.loads((tmp_path / "report.json").read_text())["excluded_stale"] == 4


# ------------------------------------------------------------------ report of a folder alone
@pytest.mark.slow
def test_folder_report_of_one_protocol_is_unchanged(tmp_path) -> None:
    from taskgrad.bench.report import report

    _train(parse_config(_raw()), tmp_path)
    md = report(tmp_path).read_text()
    assert sorted(_table_labels(md)) == ["mean", "mgda", "single-task:cls", "single-task:reg"]
    assert "stale runs" not in md
    assert json.loads((tmp_path / "report.json").read_text())["excluded_stale"] == 0


@pytest.mark.slow
def test_folder_report_keeps_the_protocol_of_the_newest_result(tmp_path) -> None:
    from taskgrad.bench.report import report

    _, _, new = _changed_config_on_disk(tmp_path)
    md = report(tmp_path).read_text()
    assert sorted(_table_labels(md)) == ["mean", "single-task:cls", "single-task:reg"]
    assert "tiny/mgda/seed0" in md.split("stale runs (another config", 1)[1]
    # make the old mgda result the newest one: now it is B's runs that are listed (never a mix)
    _set_mtime(tmp_path, "tiny/mgda/seed0", 3_000_000)
    md = report(tmp_path).read_text()
    assert _table_labels(md) == ["mgda"]
    stale = json.loads((tmp_path / "report.json").read_text())["experiments"]["tiny"]["stale_runs"]
    assert sorted(s["run_id"] for s in stale) == sorted(r["run_id"] for r in new)


# ------------------------------------------------------------------ the command line
@pytest.mark.slow
def test_cli_bench_and_report_exclude_stale_runs(tmp_path) -> None:
    from taskgrad.cli import main

    toml = _cli_toml("cli", ["mean", "mgda"], single_task=True)
    path, out = tmp_path / "c.toml", tmp_path / "out"
    path.write_text(toml.format(epochs=1))
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    path.write_text(toml.format(epochs=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["bench", str(path), "--out", str(out), "--quiet", "--methods", "mean"]) == 0
    for md in ((out / "report.md").read_text(),):
        assert (
            "mgda" not in _table_labels(md, "cli")
            and "cli/mgda/seed0" in md.split("stale runs", 1)[1]
        )
        assert str(path) in md.split("stale runs", 1)[1]  # the command to rerun names the config
    (out / "report.md").unlink()
    assert main(["report", str(out), "--config", str(path)]) == 0
    md = (out / "report.md").read_text()
    assert (
        "mgda" not in _table_labels(md, "cli") and "cli/mgda/seed0" in md.split("stale runs", 1)[1]
    )
    assert json.loads((out / "report.json").read_text())["excluded_stale"] == 1


# ------------------------------------------------------------------ the runner's recompute warning
@pytest.mark.parametrize("show_progress", [False, True])
def test_recomputing_a_stale_result_warns_quiet_or_not(tmp_path, capsys, show_progress) -> None:
    from taskgrad.bench.runner import StaleResultWarning

    old = next(r for r in parse_config(_raw(single_task=False)).runs if r.method == "mean")
    first = run(old, tmp_path, show_progress=False)
    new = next(
        r for r in parse_config(_raw(single_task=False, epochs=2)).runs if r.method == "mean"
    )
    capsys.readouterr()
    with pytest.warns(
        StaleResultWarning, match=r"tiny/mean/seed0.*epochs 1 → 2.*recomputing"
    ) as rec:
        res = run(new, tmp_path, show_progress=show_progress)
    assert len(rec) == 1 and issubclass(StaleResultWarning, UserWarning)
    assert len(res["history"]) == 2 and len(first["history"]) == 1
    assert (
        "recomputing" in capsys.readouterr().out
    ) == show_progress  # the progress line as before
    with warnings.catch_warnings():  # a result of the same config is reused without a warning
        warnings.simplefilter("error", StaleResultWarning)
        again = run(new, tmp_path, show_progress=False)
    assert again["history"] == res["history"]


@pytest.mark.slow
def test_cli_quiet_bench_still_reports_the_recompute(tmp_path) -> None:
    from taskgrad.bench.runner import StaleResultWarning
    from taskgrad.cli import main

    toml = _cli_toml("q", ["mean"])
    path, out = tmp_path / "c.toml", tmp_path / "out"
    path.write_text(toml.format(epochs=1))
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    path.write_text(toml.format(epochs=2))
    with pytest.warns(StaleResultWarning, match="q/mean/seed0"):
        assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    assert np.isfinite(
        json.loads((out / "q/mean/seed0/result.json").read_text())["final"]["reg/mse"]
    )


def test_report_json_is_strict_json() -> None:
    """Non-finite numbers (e.g. a NaN time per step) become null, so strict parsers read
    report.json.
    """
    import math

    from taskgrad.bench.report import _strict_json

    v = _strict_json(
        {"a": float("nan"), "b": (1.0, float("inf")), "c": [{"d": -math.inf, "e": 2}], "f": "x"}
    )
    assert v == {"a": None, "b": [1.0, None], "c": [{"d": None, "e": 2}], "f": "x"}
    json.dumps(v, allow_nan=False)
