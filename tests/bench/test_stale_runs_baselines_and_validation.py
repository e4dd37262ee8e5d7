"""Review fixes of the harness, each on tiny generated data: a stale saved run is recomputed (never
silently reused as a Δm baseline), an explicit ``val_baseline`` is never silently overridden on
resume, YAML merge keys, one validation pass per epoch, and problems whose ``evaluate`` takes no
``indices=`` (or no ``split=``)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from taskgrad.bench import load_config, parse_config, registry, run
from taskgrad.bench.problem import Problem
from taskgrad.bench.problems.census import CensusProblem
from taskgrad.bench.problems.synthetic import SyntheticProblem
from taskgrad.bench.runner import run_all, single_task_val_baseline
from taskgrad.bench.validation import carve_validation

# these tests recompute stale runs on purpose; the warning itself is tested in test_report_stale.py
pytestmark = pytest.mark.filterwarnings("ignore::taskgrad.bench.runner.StaleResultWarning")


class _Interrupt(Exception):
    pass


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


# ------------------------------------------------------------------ 1. stale saved runs
def _dm_config(**over):
    raw = {
        "name": "st",
        "dataset": "synthetic",
        "methods": ["mean", "mgda"],
        "seeds": [0],
        "epochs": 2,
        "batch_size": 16,
        "data": {"n_train": 64, "n_test": 32},
        "val_fraction": 0.25,
        "single_task": True,
        "optimizer": {"name": "sgd", "lr": 0.05},
        "selection": {"criterion": "delta_m"},
    }
    raw.update(over)
    return parse_config(raw)


def test_single_task_config_is_the_parsed_baseline_run() -> None:
    from taskgrad.bench.config import single_task_config

    cfg = _dm_config()
    mtl = next(r for r in cfg.runs if r.method == "mgda")
    parsed = [r for r in cfg.runs if r.is_single_task]
    assert [single_task_config(mtl, i, t) for i, t in enumerate(["reg", "cls"])] == parsed


def test_stale_single_task_baseline_is_recomputed_not_reused(tmp_path, capsys) -> None:
    """The baselines of a 2-epoch config are on disk; the config now says 3 epochs and only the new
    "mean" run is started (as with `--methods mean` outside the CLI): the single-task runs are
    recomputed with the new config, the progress output says so, and the Δm baseline is theirs."""
    run_all([r for r in _dm_config().runs if r.is_single_task], tmp_path, show_progress=False)
    new = _dm_config(epochs=3)
    mtl = next(r for r in new.runs if r.method == "mean")
    capsys.readouterr()
    res = run(mtl, tmp_path, show_progress=True)
    out = capsys.readouterr().out
    base = {}
    stl = [r for r in new.runs if r.is_single_task]  # the baselines of the new config
    for st, key in zip(stl, ["reg/mse", "cls/acc"], strict=True):
        saved = json.loads((tmp_path / st.run_id / "result.json").read_text())
        assert saved["fingerprint"] == st.fingerprint() and len(saved["history"]) == 3
        assert st.run_id in out and "recomputing" in out and "epochs" in out
        base[key] = saved["selection"]["val"][key]
    assert res["selection"]["baseline"] == base and len(res["history"]) == 3
    # a run whose result matches is reused as it is: nothing is recomputed
    again = run(stl[0], tmp_path, show_progress=True)
    assert (
        "recomputing" not in capsys.readouterr().out
        and again["history"]
        == json.loads((tmp_path / "st" / "single-task-reg" / "seed0" / "result.json").read_text())[
            "history"
        ]
    )


@pytest.mark.slow
def test_cli_methods_recomputes_stale_single_task_runs(tmp_path) -> None:
    """`taskgrad bench CONFIG --methods mean` after the config changed (here: its data): the kept
    single-task runs are retrained with the new config (their old checkpoint is the end of a
    finished
    run of the old config, not an interrupted run to protect) and the Δm baseline is theirs."""
    from taskgrad.cli import main

    toml = (
        'name = "cli"\ndataset = "synthetic"\nmethods = ["mean", "mgda"]\nepochs = 2\nbatch_size = '
        "32\n"
        'single_task = true\nval_fraction = 0.25\n[optimizer]\nname = "sgd"\nlr = 0.05\n'
        '[selection]\ncriterion = "delta_m"\n[data]\nn_train = 64\nn_test = 16\ndata_seed = '
        "{seed}\n"
    )
    path, out = tmp_path / "c.toml", tmp_path / "out"
    path.write_text(toml.format(seed=0))
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    path.write_text(toml.format(seed=1))
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--methods", "mean"]) == 0
    cfg = load_config(path)
    mean = next(r for r in cfg.runs if r.method == "mean")
    res = json.loads((out / mean.run_id / "result.json").read_text())
    assert res["fingerprint"] == mean.fingerprint()
    base = {}
    for r in (r for r in cfg.runs if r.is_single_task):
        saved = json.loads((out / r.run_id / "result.json").read_text())
        assert saved["fingerprint"] == r.fingerprint() and saved["config"]["data"]["data_seed"] == 1
        base.update(
            {
                k: v
                for k, v in saved["selection"]["val"].items()
                if k.startswith(r.label.split(":")[1])
            }
        )
    assert res["selection"]["baseline"] == base


def test_stale_baseline_file_is_an_error_naming_the_difference(tmp_path) -> None:
    run_all([r for r in _dm_config().runs if r.is_single_task], tmp_path, show_progress=False)
    mtl = next(r for r in _dm_config(batch_size=32).runs if r.method == "mean")
    with pytest.raises(RuntimeError, match="batch_size"):
        single_task_val_baseline(tmp_path, mtl, ["reg", "cls"], ["reg/mse", "cls/acc"])
    same = next(r for r in _dm_config().runs if r.method == "mean")
    assert set(
        single_task_val_baseline(tmp_path, same, ["reg", "cls"], ["reg/mse", "cls/acc"])
    ) == {"reg/mse", "cls/acc"}


def test_an_interrupted_run_of_another_config_is_still_protected(tmp_path) -> None:
    """A stale result.json lets a finished run of another config be replaced, but a checkpoint that
    is
    not the end of that finished run (an interrupted run of a third config) still stops the run."""
    rc = next(
        r
        for r in _dm_config(single_task=False, selection={"criterion": "last"}).runs
        if r.method == "mean"
    )
    run(rc, tmp_path, show_progress=False)
    other = replace(rc, optimizer={"name": "sgd", "lr": 0.01})

    def stop(step: int) -> None:
        if step == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(
            replace(rc, checkpoint_every=1, optimizer={"name": "sgd", "lr": 0.02}),
            tmp_path,
            show_progress=False,
            on_step=stop,
        )
    with pytest.raises(RuntimeError, match="different config"):
        run(other, tmp_path, show_progress=False)


def test_a_recomputed_run_keeps_no_best_model_of_the_stale_one(tmp_path) -> None:
    """The stale run selected by validation loss (best_model.pt); the new config keeps the last
    epoch, so no best_model.pt of the old run may be left next to the new result."""
    rc = next(
        r
        for r in _dm_config(single_task=False, selection={"criterion": "val_loss"}).runs
        if r.method == "mean"
    )
    run(rc, tmp_path, show_progress=False)
    assert (tmp_path / rc.run_id / "best_model.pt").is_file()
    new = replace(rc, selection={"criterion": "last"})
    res = run(new, tmp_path, show_progress=False)
    assert res["fingerprint"] == new.fingerprint() and res["selection"]["criterion"] == "last"
    assert not (tmp_path / rc.run_id / "best_model.pt").exists()


# ------------------------------------------------------------------ 2. explicit val_baseline on
# resume
_FIXED = {"reg/mse": 2.0, "cls/acc": 0.8}


def _fixed_dm_run():
    return next(
        r
        for r in _dm_config(single_task=False, baseline=_FIXED, epochs=3, checkpoint_every=2).runs
        if r.method == "mean"
    )


def _interrupt_in_epoch_2(rc, out, **kw) -> None:
    def stop(step: int) -> None:
        if step == 5:  # 3 steps per epoch: in epoch 2, after the checkpoints of epoch 1 and step 4
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(rc, out, show_progress=False, on_step=stop, **kw)


def test_resume_with_a_different_explicit_val_baseline_is_an_error(tmp_path) -> None:
    rc = _fixed_dm_run()
    _interrupt_in_epoch_2(rc, tmp_path)
    other = {"reg/mse": 1.0, "cls/acc": 0.9}
    with pytest.raises(ValueError, match="val_baseline") as e:
        run(rc, tmp_path, show_progress=False, val_baseline=other)
    assert "resume=False" in str(e.value) and "2.0" in str(
        e.value
    )  # says what the run used and how to change it
    res = run(
        rc, tmp_path, show_progress=False, val_baseline=dict(_FIXED)
    )  # the same values: resumes
    assert res["resumed"] == 1 and res["selection"]["baseline"] == _FIXED
    fresh = run(
        rc, tmp_path / "fresh", show_progress=False, val_baseline=other
    )  # no checkpoint: it wins
    assert fresh["selection"]["baseline"] == other
    dm = [
        50 * ((h["val/reg/mse"] - 1.0) / 1.0 - (h["val/cls/acc"] - 0.9) / 0.9)
        for h in fresh["history"]
    ]
    assert [h["val_score"] for h in fresh["history"]] == pytest.approx(dm)


def test_explicit_val_baseline_is_kept_by_a_plain_resume(tmp_path) -> None:
    """Started with an explicit baseline, resumed without one: the run goes on against the explicit
    baseline (from its checkpoint), not the config's, and matches an uninterrupted run."""
    rc = _fixed_dm_run()
    mine = {"reg/mse": 1.5, "cls/acc": 0.6}
    full = run(rc, tmp_path / "a", show_progress=False, val_baseline=mine)
    _interrupt_in_epoch_2(rc, tmp_path / "b", val_baseline=mine)
    res = run(rc, tmp_path / "b", show_progress=False)
    assert res["resumed"] == 1 and res["selection"]["baseline"] == mine
    assert _strip(res["history"]) == _strip(full["history"])


# ------------------------------------------------------------------ 3. YAML merge keys
_MERGE_YAML = """name: m
dataset: synthetic
methods:
  - &cag {name: cagrad, c: 0.4, label: cag}
  - {<<: *cag, c: 0.5, label: cag5}
  - {<<: [*cag, &pc {name: pcgrad, label: pc}], label: cag-again}
seeds: [0]
optimizer: &opt {name: sgd, lr: 1e-3, momentum: 0.9}
scheduler:
  <<: {name: plateau, factor: 0.5}
  patience: 2
"""
_MERGE_TOML = """name = "m"
dataset = "synthetic"
methods = [{name = "cagrad", c = 0.4, label = "cag"}, {name = "cagrad", c = 0.5, label = "cag5"},
           {name = "cagrad", c = 0.4, label = "cag-again"}]
seeds = [0]
[optimizer]
name = "sgd"
lr = 1e-3
momentum = 0.9
[scheduler]
name = "plateau"
factor = 0.5
patience = 2
"""


def test_yaml_merge_keys_give_the_merged_runs(tmp_path) -> None:
    """`<<: *a` copies a's keys, this mapping's own keys override them, and in `<<: [*a, *b]` the
    earlier mapping wins (the YAML merge-key rule)."""
    pytest.importorskip("yaml")
    (tmp_path / "m.yaml").write_text(_MERGE_YAML)
    (tmp_path / "m.toml").write_text(_MERGE_TOML)
    a, b = load_config(tmp_path / "m.yaml"), load_config(tmp_path / "m.toml")
    assert a.runs == b.runs and [r.label for r in a.runs] == ["cag", "cag5", "cag-again"]
    assert [r.method_kwargs for r in a.runs] == [{"c": 0.4}, {"c": 0.5}, {"c": 0.4}]
    assert a.runs[0].scheduler["patience"] == 2 and a.runs[0].optimizer["lr"] == 1e-3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "name: e\ndataset: synthetic\nmethods: [{<<: {name: mean}, name: mgda, name: famo}]\n",
            "duplicate key 'name'",
        ),
        ("name: e\ndataset: synthetic\nmethods: [mean]\nx: &x [1, 2]\ndata: {<<: *x}\n", "merge"),
        ("name: e\ndataset: synthetic\nmethods: [{<<: {name: mean}, <<: {label: m}}]\n", "<<"),
    ],
    ids=["own-duplicate", "merge-of-a-list", "two-merge-keys"],
)
def test_yaml_merge_errors_are_clear(tmp_path, text, match) -> None:
    pytest.importorskip("yaml")
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


# ------------------------------------------------------------------ 4. one validation pass per
# epoch
_FORWARDS = {"eval": 0, "train": 0}


def _count(module, inputs, output) -> None:
    _FORWARDS["train" if module.training else "eval"] += 1


class _Counting(SyntheticProblem):
    """Synthetic data; the model counts its forward passes (train / eval mode)."""

    def make_model(self, hidden: int = 8):
        m = super().make_model(hidden)
        m.register_forward_hook(_count)
        return m


class _CountingWithVal(_Counting):
    """…with the data set's own validation split (12 generated rows), as QM9 has."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        g = torch.Generator().manual_seed(5)
        self.x["val"] = torch.randn(12, self.dim, generator=g)
        self.y["val"] = torch.stack([self.x["val"][:, 0], (self.x["val"][:, 1] > 0).float()], 1)


@pytest.mark.parametrize(
    ("problem", "val_fraction", "n_val"),
    [(_Counting, 0.25, 16), (_CountingWithVal, 0.0, 12)],
    ids=["carved", "own-split"],
)
def test_validation_is_one_forward_pass_per_batch(
    tmp_path, add_problem, problem, val_fraction, n_val
) -> None:
    add_problem("counting", problem, ["reg", "cls"])
    registry.clear_cache()
    rc = parse_config(
        {
            "name": "c",
            "dataset": "counting",
            "methods": ["mean"],
            "epochs": 2,
            "batch_size": 16,
            "eval_batch_size": 5,
            "data": {"n_train": 64, "n_test": 32},
            "val_fraction": val_fraction,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "selection": {"criterion": "val_loss"},
        }
    ).runs[0]
    _FORWARDS.update(eval=0, train=0)
    res = run(rc, tmp_path, show_progress=False)
    per_epoch = math.ceil(32 / 5) + math.ceil(n_val / 5)  # test batches + validation batches
    assert _FORWARDS["eval"] == 2 * per_epoch, _FORWARDS
    assert res["selection"]["n_val"] == n_val
    # the logged validation numbers are what the separate evaluate / mean_losses give the final
    # model
    p = registry.get_problem("counting", n_train=64, n_test=32)
    model = p.make_model()
    model.load_state_dict(
        torch.load(tmp_path / rc.run_id / "checkpoint.pt", weights_only=False)["model"]
    )
    split, idx = (
        ("train", carve_validation(64, 0.25, rc.seed)[1]) if val_fraction else ("val", None)
    )
    last = res["history"][-1]
    assert {k: last[f"val/{k}"] for k in ("reg/mse", "cls/acc")} == p.evaluate(
        model, 5, split=split, indices=idx
    )
    assert [last["val_loss/reg"], last["val_loss/cls"]] == p.mean_losses(
        model, 5, split=split, indices=idx
    )


def test_evaluate_with_losses_equals_evaluate_and_mean_losses() -> None:
    torch.manual_seed(0)
    p = SyntheticProblem(n_train=50, n_test=20)
    model = p.make_model()
    model.train()
    idx = torch.tensor([3, 7, 8, 20, 41, 44, 49])
    for split, rows in (("test", None), ("train", idx)):
        metrics, losses = p.evaluate_with_losses(model, 3, split=split, indices=rows)
        assert metrics == p.evaluate(model, 3, split=split, indices=rows)
        assert losses == p.mean_losses(model, 3, split=split, indices=rows)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="empty"):
        p.evaluate_with_losses(model, 3, split="train", indices=idx[:0])


def _tiny_census(n_train: int = 30) -> CensusProblem:
    """A CensusProblem on 40 generated rows (6 features, two binary tasks), without a census
    file.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] + x[:, 2] > 0).long()], 1)
    p = CensusProblem.__new__(CensusProblem)
    Problem.__init__(p, x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    p.dim = 6
    return p


class _CountingCensus(CensusProblem):
    def make_model(self, hidden=None):
        m = super().make_model(hidden)
        m.register_forward_hook(_count)
        return m


def test_census_validation_is_one_pass_too(tmp_path, add_problem) -> None:
    """CensusProblem's AUC is not a sum over batches; its validation is still one forward pass per
    batch, and gives exactly what its evaluate and mean_losses give."""
    pytest.importorskip("sklearn")

    def factory(**kw):
        p = _tiny_census(**kw)
        p.__class__ = _CountingCensus
        return p

    add_problem("census-tiny", factory, ["income", "marital"])
    registry.clear_cache()
    rc = parse_config(
        {
            "name": "c",
            "dataset": "census-tiny",
            "methods": ["mean"],
            "epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 4,
            "model": {"hidden": [8]},
            "val_fraction": 0.5,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "selection": {"criterion": "val_loss"},
        }
    ).runs[0]
    _FORWARDS.update(eval=0, train=0)
    res = run(rc, tmp_path, show_progress=False)
    assert _FORWARDS["eval"] == math.ceil(10 / 4) + math.ceil(15 / 4)  # test + validation batches
    p = registry.get_problem("census-tiny")
    model = p.make_model(hidden=[8])
    model.load_state_dict(
        torch.load(tmp_path / rc.run_id / "checkpoint.pt", weights_only=False)["model"]
    )
    idx = carve_validation(30, 0.5, rc.seed)[1]
    row = res["history"][-1]
    assert {k: row[f"val/{k}"] for k in ("income/auc", "marital/auc")} == p.evaluate(
        model, 4, split="train", indices=idx
    )
    assert [row["val_loss/income"], row["val_loss/marital"]] == p.mean_losses(
        model, 4, split="train", indices=idx
    )


# ------------------------------------------------------------------ 5. evaluate without indices= /
# split=
class _Modern(SyntheticProblem):
    """A user problem with its own metric loop (mean absolute error), taking ``indices=``."""

    def evaluate(self, model, batch_size=1024, split="test", indices=None):
        rows = torch.arange(self.n(split)) if indices is None else indices
        x, y = self.batch(rows, split)
        with torch.no_grad():
            _, outs = model(x)
        return {
            "reg/mse": float((outs[0].squeeze(-1) - y[:, 0]).abs().mean()),
            "cls/acc": float(((outs[1].squeeze(-1) > 0).float() == y[:, 1]).float().mean()),
        }


class _NoIndices(_Modern):
    """The same metrics with the signature of the harness before validation splits (no
    ``indices=``).
    """

    def evaluate(self, model, batch_size=1024, split="test"):
        return super().evaluate(model, batch_size, split)


class _NoSplit(_Modern):
    """An evaluate that only knows the test split."""

    def evaluate(self, model, batch_size=1024):
        return super().evaluate(model, batch_size)


def _user_run(add_problem, problem, **over):
    add_problem("user", problem, ["reg", "cls"])
    registry.clear_cache()
    raw = {
        "name": "u",
        "dataset": "user",
        "methods": ["mean"],
        "epochs": 2,
        "batch_size": 16,
        "data": {"n_train": 64, "n_test": 32},
        "val_fraction": 0.25,
        "optimizer": {"name": "sgd", "lr": 0.05},
        "selection": {"criterion": "metric", "metric": "reg/mse"},
    }
    raw.update(over)
    return parse_config(raw).runs[0]


@pytest.mark.parametrize("val_fraction", [0.25, 0.0], ids=["carved", "own-split"])
def test_evaluate_without_indices_is_supported(tmp_path, add_problem, val_fraction) -> None:
    """Same training, same validation rows: a problem whose evaluate takes no indices= logs exactly
    the validation metrics of the same problem with indices=."""

    class WithVal(_Modern):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.x["val"], self.y["val"] = self.x["test"][:10], self.y["test"][:10]

    class WithValNoIndices(WithVal):
        def evaluate(self, model, batch_size=1024, split="test"):
            return _Modern.evaluate(self, model, batch_size, split)

    modern, legacy = (WithVal, WithValNoIndices) if val_fraction == 0 else (_Modern, _NoIndices)
    a = run(
        _user_run(add_problem, modern, val_fraction=val_fraction),
        tmp_path / "a",
        show_progress=False,
    )
    b = run(
        _user_run(add_problem, legacy, val_fraction=val_fraction),
        tmp_path / "b",
        show_progress=False,
    )
    assert _strip(a["history"]) == _strip(b["history"]) and a["selection"] == b["selection"]
    assert a["selection"]["n_val"] == (16 if val_fraction else 10)
    assert "val/reg/mse" in b["history"][0] and "val_loss/reg" in b["history"][0]


def test_evaluate_without_split_is_an_early_clear_error(tmp_path, add_problem) -> None:
    steps = []
    rc = _user_run(add_problem, _NoSplit)
    with pytest.raises(
        TypeError, match=r"def evaluate\(self, model, batch_size=1024, split='test', indices=None\)"
    ):
        run(rc, tmp_path, show_progress=False, on_step=steps.append)
    assert steps == []  # before any training step
    # without a validation split it is a valid problem, as before
    res = run(
        _user_run(add_problem, _NoSplit, val_fraction=0.0, selection={"criterion": "last"}),
        tmp_path / "ok",
        show_progress=False,
    )
    assert len(res["history"]) == 2 and not any(k.startswith("val") for k in res["final"])
