"""Protocol features of the harness on tiny generated data (a few steps, three to five epochs):
YAML configs and config errors, learning-rate schedules (each against its formula, and exact
resume after an interrupt), the validation split, and model selection on the validation set."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from dataclasses import asdict, replace

import pytest
import torch

from taskgrad.bench import load_config, parse_config, registry, run
from taskgrad.bench.problem import Metric
from taskgrad.bench.problems.synthetic import SyntheticProblem
from taskgrad.bench.report import collect, markdown_table, report, summarize
from taskgrad.bench.runner import run_all
from taskgrad.bench.validation import Selector, carve_validation

# ------------------------------------------------------------------ YAML and config errors
_TOML = """name = "e"
dataset = "synthetic"
methods = ["mean", {name = "cagrad", c = 0.4, label = "cag"}]
seeds = [1, 2]
epochs = 4
batch_size = 16
single_task = true
val_fraction = 0.25
[data]
n_train = 64
[optimizer]
name = "sgd"
lr = 1e-3
momentum = 0.9
[scheduler]
name = "plateau"
factor = 0.5
patience = 2
monitor = "criterion"
[selection]
criterion = "delta_m"
"""
_YAML = """name: e
dataset: synthetic
methods:
  - mean
  - {name: cagrad, c: 0.4, label: cag}
seeds: [1, 2]
epochs: 4
batch_size: 16
single_task: true
val_fraction: 0.25
data:
  n_train: 64
optimizer: {name: sgd, lr: 1e-3, momentum: 0.9}   # a float here (YAML 1.1 reads a string)
scheduler:
  name: plateau
  factor: 0.5
  patience: 2
  monitor: criterion
selection:
  criterion: delta_m
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_and_toml_configs_give_the_same_runs(tmp_path, suffix) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "c.toml").write_text(_TOML)
    (tmp_path / f"c{suffix}").write_text(_YAML)
    a, b = load_config(tmp_path / "c.toml"), load_config(tmp_path / f"c{suffix}")
    assert a.runs == b.runs and len(a.runs) == 8
    assert [r.fingerprint() for r in a.runs] == [r.fingerprint() for r in b.runs]
    r = b.runs[0]
    assert r.optimizer["lr"] == 1e-3 and isinstance(r.optimizer["lr"], float)
    assert r.scheduler == {
        "name": "plateau",
        "factor": 0.5,
        "patience": 2,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_lr": 0.0,
        "monitor": "criterion",
    }
    assert r.selection == {"criterion": "delta_m"} and r.val_fraction == 0.25


def test_yaml_without_pyyaml_says_how_to_install(tmp_path, monkeypatch) -> None:
    (tmp_path / "c.yaml").write_text(_YAML)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    with pytest.raises(ImportError, match="pip install pyyaml"):
        load_config(tmp_path / "c.yaml")


_BASE = {"name": "e", "dataset": "synthetic", "methods": ["mean"]}


@pytest.mark.parametrize(
    ("extra", "key", "match"),
    [
        ({"epochs": "3"}, "epochs", "int"),
        ({"typo": 1}, "typo", "unknown key 'typo'"),
        ({"seeds": [True]}, "seeds", "list of ints"),
        ({"single_task": "yes"}, "single_task", "true or false"),
        ({"val_fraction": 1.0}, "val_fraction", r"\[0, 1\)"),
        ({"val_fraction": "0.1"}, "val_fraction", "number"),
        ({"optimizer": {"lr": "fast"}}, "lr", "positive number"),
        ({"optimizer": {"momentum": 1.5}}, "momentum", r"\[0, 1\)"),
        ({"scheduler": {"name": "exp"}}, "scheduler", "one of"),
        (
            {"scheduler": {"name": "cosine", "step_size": 2}},
            "step_size",
            r"unknown key 'step_size' in \[scheduler\]",
        ),
        ({"scheduler": {"name": "step"}}, "step_size", "exactly one"),
        ({"scheduler": {"name": "plateau", "patience": 1.5}}, "patience", "int"),
        (
            {"scheduler": {"name": "plateau", "monitor": "criterion"}},
            "monitor",
            "criterion other than 'last'",
        ),
        ({"selection": {"criterion": "best"}}, "criterion", "one of"),
        ({"selection": {"criterion": "metric", "metric": "nope/mse"}}, "metric", "not one of"),
        ({"selection": {"criterion": "delta_m"}}, "delta_m", "single_task = true"),
        ({"methods": [{"name": "cagrad", "cc": 1}]}, "cagrad", "does not accept"),
        ({"dataset": "no-such-data"}, "dataset", "unknown dataset"),
        ({"data": [1, 2]}, "data", "table"),
        ({"data": {"n_trian": 64}}, "n_trian", r"\[data\].*Did you mean 'n_train'\?"),
        ({"model": {"hiden": 4}}, "hiden", r"\[model\].*Did you mean 'hidden'\?"),
        ({"optimizer": {"momentun": 0.9}}, "momentun", r"\[optimizer\].*Did you mean 'momentum'\?"),
        ({"methods": ["pcgard"]}, "pcgard", "Did you mean 'pcgrad'"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, extra, key, match) -> None:
    """Written as TOML where TOML can hold the value, as YAML otherwise: the error names both."""
    raw = {**_BASE, **extra}
    path = tmp_path / "bad.json.yaml"
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        path.write_text(yaml.safe_dump(raw))
    else:  # without PyYAML: the same check through parse_config with the file name as `where`
        path = tmp_path / "bad.toml"
    with pytest.raises(ValueError) as e:
        if yaml is not None:
            load_config(path)
        else:
            parse_config(raw, where=str(path))
    msg = str(e.value)
    assert str(path) in msg and key in msg, msg
    assert __import__("re").search(match, msg), msg


def test_yaml_duplicate_keys_and_bad_files_are_errors(tmp_path) -> None:
    pytest.importorskip("yaml")
    p = tmp_path / "dup.yaml"
    p.write_text("name: e\ndataset: synthetic\nmethods: [mean]\nepochs: 2\nepochs: 3\n")
    with pytest.raises(ValueError, match="duplicate key 'epochs'"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(p)
    p.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(p)
    q = tmp_path / "c.json"
    q.write_text("{}")
    with pytest.raises(ValueError, match="TOML .* or YAML"):
        load_config(q)


def test_default_fingerprint_is_that_of_older_versions() -> None:
    """Saved runs of the harness before [scheduler]/[selection]/val_fraction and the label
    fractions keep their fingerprint: the old rule was sha1 of the sorted JSON of every field but
    ``device`` (the fields of that version)."""
    rc = parse_config(
        {**_BASE, "selection": {"criterion": "last"}, "scheduler": {"name": "none"}}
    ).runs[0]
    old = asdict(rc)
    later = ("scheduler", "val_fraction", "selection", "label_fractions", "label_counts")
    for k in ("device", *later, "label_seed", "absent_primary"):
        old.pop(k)
    assert (
        rc.fingerprint()
        == hashlib.sha1(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    )
    assert replace(rc, val_fraction=0.1).fingerprint() != rc.fingerprint()
    assert (
        replace(rc, scheduler={"name": "step", "step_size": 1, "gamma": 0.5}).fingerprint()
        != rc.fingerprint()
    )
    fewer = replace(rc, label_fractions={"reg": 0.5})
    seeded = replace(fewer, label_seed=3)
    assert len({rc.fingerprint(), fewer.fingerprint(), seeded.fingerprint()}) == 3
    assert replace(rc, absent_primary="mean").fingerprint() != rc.fingerprint()
    assert replace(rc, label_counts={"reg": 5}).fingerprint() != rc.fingerprint()


# ------------------------------------------------------------------ validation split
def test_carve_validation_is_seeded_disjoint_and_covering() -> None:
    tr, va = carve_validation(50, 0.2, seed=3)
    tr2, va2 = carve_validation(50, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 10 and sorted(torch.cat([tr, va]).tolist()) == list(range(50))
    assert not torch.equal(va, carve_validation(50, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="at least one"):
        carve_validation(3, 0.1, seed=0)


# ------------------------------------------------------------------ schedules and exact resume
def _runcfg(**over):
    raw = {
        "name": "p",
        "dataset": "synthetic",
        "methods": ["mean"],
        "seeds": [3],
        "epochs": 3,
        "batch_size": 16,
        "data": {"n_train": 64, "n_test": 32},
        "checkpoint_every": 2,
        "val_fraction": 0.25,
        "optimizer": {"name": "sgd", "lr": 0.05},
        "selection": {"criterion": "val_loss"},
    }
    raw.update(over)
    return parse_config(raw).runs


def _plateau_lrs(
    values: list[float], lr: float, factor: float, patience: int, threshold: float
) -> list[float]:
    """ReduceLROnPlateau (mode min, rel threshold, no cooldown) transcribed: the lr of each
    epoch.
    """
    best, bad, out = math.inf, 0, []
    for v in values:
        out.append(lr)
        if v < best * (1 - threshold):
            best, bad = v, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "sched",
    [
        {"name": "none"},
        {"name": "step", "step_size": 1, "gamma": 0.5},
        {"name": "step", "milestones": [2], "gamma": 0.1},
        {"name": "cosine", "eta_min": 0.01},
        {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.5},
    ],
    ids=["none", "step", "milestones", "cosine", "plateau"],
)
def test_scheduler_follows_its_formula_and_resumes_bit_identically(tmp_path, sched) -> None:
    rc = _runcfg(scheduler=sched)[0]
    full = run(rc, tmp_path / "a", show_progress=False)
    hist = full["history"]
    lrs = [h["lr"] for h in hist]
    e = range(3)  # finished epochs before each epoch
    if sched["name"] == "none":
        want = [0.05] * 3
    elif "step_size" in sched:
        want = [0.05 * 0.5 ** (i // 1) for i in e]
    elif "milestones" in sched:
        want = [0.05 * 0.1 ** sum(m <= i for m in [2]) for i in e]
    elif sched["name"] == "cosine":  # t_max defaults to the number of epochs
        want = [0.01 + 0.04 * (1 + math.cos(math.pi * i / 3)) / 2 for i in e]
    else:
        want = _plateau_lrs([h["val_loss"] for h in hist], 0.05, 0.5, 0, 0.5)
        assert len(set(want)) > 1, "the plateau case should reduce the lr at least once"
    assert lrs == pytest.approx(want, rel=1e-12)

    def stop(step: int) -> None:
        if step == 5:  # epoch 2 of 3 (3 steps per epoch), one step after the checkpoint at step 4
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(rc, tmp_path / "b", show_progress=False, on_step=stop)
    resumed = run(rc, tmp_path / "b", show_progress=False)
    assert resumed["resumed"] == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]  # noqa: E731
    assert strip(resumed["history"]) == strip(hist)  # exact: same floats, same lr, same selection
    assert (
        resumed["selection"] == full["selection"]
        and resumed["final"]["reg/mse"] == full["final"]["reg/mse"]
    )
    for name in ("checkpoint.pt", "best_model.pt"):
        a = torch.load(tmp_path / "a" / rc.run_id / name, weights_only=False)
        b = torch.load(tmp_path / "b" / rc.run_id / name, weights_only=False)
        a, b = (a["model"], b["model"]) if name == "checkpoint.pt" else (a, b)
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ------------------------------------------------------------------ model selection
def test_selector_on_hand_made_numbers() -> None:
    specs = {"a/acc": True, "b/mse": False}
    s = Selector("metric", specs, ["a", "b"], metric="a/acc")
    assert [
        s.update(e, s.score(v, None))
        for e, v in enumerate([{"a/acc": 0.5}, {"a/acc": 0.7}, {"a/acc": 0.7}], 1)
    ] == [True, True, False]
    assert s.best_epoch == 2  # a tie keeps the earlier epoch
    d = Selector("delta_m", specs, ["a", "b"], baseline={"a/acc": 0.8, "b/mse": 1.0})
    # Δm = 50 (−(acc − 0.8)/0.8 + (mse − 1)/1)
    assert d.score({"a/acc": 0.9, "b/mse": 1.1}, None) == pytest.approx(50 * (-0.125 + 0.1))
    # a single-task baseline of task b selects on its own metric only (here: mse relative to epoch
    # 1)
    own = Selector("delta_m", specs, ["a", "b"], single_task=1)
    assert own.score({"a/acc": 0.1, "b/mse": 2.0}, None) == pytest.approx(1.0)
    assert own.score({"a/acc": 0.9, "b/mse": 1.0}, None) == pytest.approx(0.5)
    assert Selector("val_loss", specs, ["a", "b"], single_task=0).score({}, [0.3, 5.0]) == 0.3
    assert Selector("primary", specs, ["b", "a"]).metric == "b/mse"
    with pytest.raises(ValueError, match="missing"):
        Selector("delta_m", specs, ["a", "b"], baseline={"a/acc": 0.8})


# validation metrics per epoch (scripted), baseline reg/mse 2.0, cls/acc 0.8:
# Δm_e = 50·((mse − 2)/2 − (acc − 0.8)/0.8) = 43.75, −12.5, −16.25, −5.625, 18.75
_VAL = {"reg/mse": [3.0, 1.0, 1.6, 2.2, 2.5], "cls/acc": [0.5, 0.6, 0.9, 0.97, 0.7]}
_TEST = {"reg/mse": [10.0, 20.0, 30.0, 40.0, 50.0], "cls/acc": [0.1, 0.2, 0.3, 0.4, 0.5]}


class _Scripted(SyntheticProblem):
    """Synthetic training; evaluate returns the scripted metrics of the next epoch (val: split
    rows).
    """

    tasks = ["reg", "cls"]
    metrics = [Metric("reg", "mse", False), Metric("cls", "acc", True)]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.calls = {"val": 0, "test": 0}

    def evaluate(self, model, batch_size=1024, split="test", indices=None):
        which = "test" if indices is None and split == "test" else "val"
        e = self.calls[which]
        self.calls[which] += 1
        src = _TEST if which == "test" else _VAL
        return {k: v[e] for k, v in src.items()}


@pytest.mark.parametrize(
    ("selection", "epoch"),
    [
        ({"criterion": "metric", "metric": "reg/mse"}, 2),  # argmin of 3.0, 1.0, 1.6, 2.2, 2.5
        ({"criterion": "primary"}, 2),  # the first metric of the first task: reg/mse
        ({"criterion": "metric", "metric": "cls/acc"}, 4),  # argmax of 0.5, 0.6, 0.9, 0.97, 0.7
        ({"criterion": "delta_m"}, 3),  # argmin of 43.75, −12.5, −16.25, −5.625, 18.75
        ({"criterion": "last"}, 5),
    ],
)
def test_selected_epoch_is_the_best_validation_epoch(
    tmp_path, add_problem, selection, epoch
) -> None:
    add_problem("scripted", _Scripted, ["reg", "cls"])
    registry.clear_cache()
    rc = parse_config(
        {
            "name": "s",
            "dataset": "scripted",
            "methods": ["mean"],
            "epochs": 5,
            "batch_size": 32,
            "data": {"n_train": 40},
            "val_fraction": 0.2,
            "selection": selection,
            "baseline": {"reg/mse": 2.0, "cls/acc": 0.8},
        }
    ).runs[0]
    res = run(rc, tmp_path, show_progress=False)
    sel = res["selection"]
    assert sel["epoch"] == epoch and res["final"]["epoch"] == epoch
    assert res["final"]["reg/mse"] == _TEST["reg/mse"][epoch - 1]  # the test metrics of that epoch
    assert res["last"]["reg/mse"] == _TEST["reg/mse"][-1]
    assert sel["val"] == {k: v[epoch - 1] for k, v in _VAL.items()} and sel["n_val"] == 8
    if selection["criterion"] == "delta_m":
        assert sel["score"] == pytest.approx(-16.25) and sel["baseline"] == {
            "reg/mse": 2.0,
            "cls/acc": 0.8,
        }
    with open(tmp_path / rc.run_id / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["selected"]) for r in rows] == [int(i + 1 == epoch) for i in range(5)]
    assert (tmp_path / rc.run_id / "best_model.pt").is_file() == (selection["criterion"] != "last")
    summ = summarize(collect(tmp_path)["s"])
    md = (
        report(tmp_path).read_text()
        if selection["criterion"] == "delta_m"
        else markdown_table("s", summ)
    )
    if selection["criterion"] != "last":
        assert "selected epoch" in md and f"| mean | 1 | 5 | {epoch} |" in md
    else:
        assert "selected epoch" not in md


def test_validation_delta_m_against_the_single_task_runs(tmp_path) -> None:
    cfg = parse_config(
        {
            "name": "d",
            "dataset": "synthetic",
            "methods": ["mean"],
            "seeds": [0],
            "epochs": 3,
            "batch_size": 16,
            "data": {"n_train": 64, "n_test": 32},
            "val_fraction": 0.25,
            "single_task": True,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "selection": {"criterion": "delta_m"},
        }
    )
    mtl = next(r for r in cfg.runs if not r.is_single_task)
    with pytest.raises(FileNotFoundError, match="single-task"):
        run(mtl, tmp_path / "alone", show_progress=False)
    results = run_all(cfg.runs, tmp_path, show_progress=False)  # single-task baselines run first
    res = next(r for r in results if r["config"]["method"] == "mean")
    stl = {
        r["config"]["method"]: r for r in results if r["config"]["method"].startswith("single-task")
    }
    # each single-task baseline selected the best validation epoch of its own metric
    for i, key in enumerate(["reg/mse", "cls/acc"]):
        h = stl[f"single-task:{i}"]["history"]
        vals = [(-1 if key == "cls/acc" else 1) * r[f"val/{key}"] for r in h]
        assert stl[f"single-task:{i}"]["selection"]["epoch"] == vals.index(min(vals)) + 1
    base = {
        "reg/mse": stl["single-task:0"]["selection"]["val"]["reg/mse"],
        "cls/acc": stl["single-task:1"]["selection"]["val"]["cls/acc"],
    }
    assert res["selection"]["baseline"] == base
    dm = [
        100
        / 2
        * (
            (h["val/reg/mse"] - base["reg/mse"]) / base["reg/mse"]
            - (h["val/cls/acc"] - base["cls/acc"]) / base["cls/acc"]
        )
        for h in res["history"]
    ]
    assert res["selection"]["epoch"] == dm.index(min(dm)) + 1
    assert [h["val_score"] for h in res["history"]] == pytest.approx(dm)


def test_last_keeps_the_final_epoch_and_its_delta_m(tmp_path) -> None:
    base = {
        "name": "l",
        "dataset": "synthetic",
        "methods": ["mean"],
        "seeds": [0],
        "epochs": 2,
        "batch_size": 64,
        "single_task": True,
        "data": {"n_train": 64, "n_test": 32},
        "optimizer": {"name": "sgd", "lr": 0.05},
    }
    a = parse_config(base).runs
    b = parse_config({**base, "selection": {"criterion": "last"}}).runs
    assert [r.fingerprint() for r in a] == [r.fingerprint() for r in b]
    results = [run(r, tmp_path, show_progress=False) for r in a]
    for r in results:
        assert r["final"] == r["history"][-1] == r["last"] and r["selection"]["epoch"] == 2
        assert not any(
            k.startswith("val") for k in r["final"]
        )  # no validation split: nothing carved
    specs = {"reg/mse": False, "cls/acc": True}
    bl = {
        "reg/mse": results[1]["history"][-1]["reg/mse"],
        "cls/acc": results[2]["history"][-1]["cls/acc"],
    }
    h = results[0]["history"][-1]
    want = 50 * (
        (h["reg/mse"] - bl["reg/mse"]) / bl["reg/mse"]
        - (h["cls/acc"] - bl["cls/acc"]) / bl["cls/acc"]
    )
    row = next(x for x in summarize(results)["rows"] if x["label"] == "mean")
    assert row["delta_m"][0] == pytest.approx(want) and set(specs) <= set(row["metrics"])


def test_validation_needed_but_missing_is_a_clear_error(tmp_path) -> None:
    rc = _runcfg(val_fraction=0.0, selection={"criterion": "val_loss"})[0]
    with pytest.raises(ValueError, match="val_fraction"):
        run(rc, tmp_path, show_progress=False)
    rc = _runcfg(val_fraction=0.0, selection={"criterion": "last"}, scheduler={"name": "plateau"})[
        0
    ]
    with pytest.raises(ValueError, match="monitor = 'val_loss'"):
        run(rc, tmp_path, show_progress=False)


def test_resume_keeps_the_best_so_far_epoch(tmp_path, add_problem) -> None:
    """Interrupted in epoch 4, after the best validation epoch (2): the resumed run still selects
    epoch 2 (a run that forgot its best-so-far state would pick epoch 4) and keeps its model."""
    add_problem("scripted", _Scripted, ["reg", "cls"])
    rc = parse_config(
        {
            "name": "s",
            "dataset": "scripted",
            "methods": ["mean"],
            "epochs": 5,
            "batch_size": 32,
            "data": {"n_train": 40},
            "val_fraction": 0.2,
            "checkpoint_every": 1,
            "selection": {"criterion": "metric", "metric": "reg/mse"},
        }
    ).runs[0]
    registry.clear_cache()
    full = run(rc, tmp_path / "a", show_progress=False)
    registry.clear_cache()  # the scripted metrics start again at epoch 1

    def stop(step: int) -> None:
        if step == 4:  # one step per epoch: inside epoch 4, before its evaluation
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(rc, tmp_path / "b", show_progress=False, on_step=stop)
    resumed = run(rc, tmp_path / "b", show_progress=False)
    assert (
        resumed["resumed"] == 1 and resumed["selection"]["epoch"] == full["selection"]["epoch"] == 2
    )
    assert resumed["final"]["reg/mse"] == _TEST["reg/mse"][1]
    a = torch.load(tmp_path / "a" / rc.run_id / "best_model.pt")
    b = torch.load(tmp_path / "b" / rc.run_id / "best_model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
