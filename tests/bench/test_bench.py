"""The benchmark harness on tiny generated data: Δm on hand-made numbers, config parsing,
training and reporting (one batch, two epochs), resume after an interrupt, the toy and MultiMNIST
composition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from taskgrad.bench import load_config, parse_config, run
from taskgrad.bench.metrics import aggregate, delta_m, mean_std
from taskgrad.bench.report import report, summarize
from taskgrad.bench.toy import trajectories
from taskgrad.datasets.multimnist import compose_pairs
from taskgrad.datasets.toy import PARETO_Y, STARTS, pareto_front, toy_losses


# ------------------------------------------------------------------ Δm and aggregation
def test_delta_m_hand_made_numbers() -> None:
    # accuracy ↑: 0.90 vs baseline 0.80 is 12.5% better → −12.5; MSE ↓: 1.1 vs 1.0 is 10% worse →
    # +10
    hib = {"a/acc": True, "b/mse": False}
    assert delta_m(
        {"a/acc": 0.90, "b/mse": 1.1}, {"a/acc": 0.80, "b/mse": 1.0}, hib
    ) == pytest.approx((-12.5 + 10.0) / 2)
    # equal to the baseline: Δm = 0; worse on both: positive
    assert delta_m({"a/acc": 0.8, "b/mse": 1.0}, {"a/acc": 0.8, "b/mse": 1.0}, hib) == 0.0
    assert delta_m(
        {"a/acc": 0.4, "b/mse": 3.0}, {"a/acc": 0.8, "b/mse": 1.0}, hib
    ) == pytest.approx((50 + 200) / 2)
    # a negative-valued metric (lower better) is compared relative to |baseline|
    assert delta_m({"e": -2.0}, {"e": -1.0}, {"e": False}) == pytest.approx(-100.0)


def test_delta_m_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(KeyError, match="missing"):
        delta_m({"a": 1.0}, {}, {"a": True})


def test_mean_std_is_sample_std() -> None:
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(float(np.std([1.0, 2.0, 4.0], ddof=1)))
    assert mean_std([3.0]) == (3.0, 0.0)
    agg = aggregate([{"x": 1.0, "y": 2.0}, {"x": 3.0}])
    assert set(agg) == {"x"} and agg["x"][0] == 2.0


# ------------------------------------------------------------------ configs
def test_config_expands_methods_seeds_and_single_task(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        'name = "e"\ndataset = "synthetic"\nmethods = ["mean", {name = "cagrad", c = 0.2}]\n'
        'seeds = [1, 2]\nepochs = 3\nsingle_task = true\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
    )
    cfg = load_config(p)
    labels = sorted({r.label for r in cfg.runs})
    assert labels == ["cagrad-c0.2", "mean", "single-task:cls", "single-task:reg"]
    assert len(cfg.runs) == 4 * 2 and {r.seed for r in cfg.runs} == {1, 2}
    cag = next(r for r in cfg.runs if r.method == "cagrad")
    assert cag.method_kwargs == {"c": 0.2} and cag.epochs == 3 and cag.optimizer["name"] == "sgd"
    assert cag.run_id == "e/cagrad-c0.2/seed1"
    assert cag.fingerprint() != next(r for r in cfg.runs if r.method == "mean").fingerprint()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"dataset": "synthetic", "methods": ["mean"]}, "'name'"),
        ({"name": "e", "dataset": "synthetic", "methods": ["no-such-method"]}, "unknown method"),
        ({"name": "e", "dataset": "synthetic", "methods": ["mean"], "epochs": 0}, "'epochs'"),
        (
            {"name": "e", "dataset": "synthetic", "methods": ["mean"], "typo": 1},
            "unknown key .typo.",
        ),
        ({"name": "e", "dataset": "synthetic", "methods": ["mean", "mean"]}, "share a label"),
        (
            {
                "name": "e",
                "dataset": "synthetic",
                "methods": ["mean"],
                "optimizer": {"name": "rmsprop"},
            },
            "optimizer",
        ),
        ({"name": "e", "dataset": "synthetic", "methods": ["mean"], "seeds": []}, "'seeds'"),
    ],
)
def test_config_errors_say_what_is_wrong(raw, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse_config(raw)


def test_checked_in_configs_parse() -> None:
    from pathlib import Path

    root = Path(__file__).parents[2] / "benchmarks" / "configs"
    configs = sorted(p for p in root.iterdir() if p.suffix in (".toml", ".yaml", ".yml"))
    assert configs, "benchmarks/configs/*.toml should exist"
    for p in configs:
        if p.suffix != ".toml":
            pytest.importorskip("yaml")
        cfg = load_config(p)
        assert cfg.kind == "toy" or cfg.runs


# ------------------------------------------------------------------ training, report, resume
def _tiny(**over):
    raw = {
        "name": "tiny",
        "dataset": "synthetic",
        "methods": ["mean", "mgda"],
        "seeds": [0, 1],
        "epochs": 2,
        "batch_size": 64,
        "single_task": True,
        "data": {"n_train": 64, "n_test": 32},
        "checkpoint_every": 1,
        "optimizer": {"name": "sgd", "lr": 0.05},
    }
    raw.update(over)
    return parse_config(raw)


@pytest.mark.slow
def test_harness_trains_saves_and_reports(tmp_path) -> None:
    cfg = _tiny()
    results = [run(r, tmp_path, show_progress=False) for r in cfg.runs]
    for r in results:
        assert len(r["history"]) == 2 and r["history"][-1]["steps"] == 1  # one batch, two epochs
        for m in r["metric_specs"]:
            assert math.isfinite(r["final"][m["key"]])
    d = tmp_path / "tiny" / "mgda" / "seed1"
    assert json.loads((d / "result.json").read_text())["run_id"] == "tiny/mgda/seed1"
    assert (d / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    # single-task runs train only their task: weights e_i
    stl = next(r for r in results if r["config"]["method"] == "single-task:1")
    assert stl["history"][0]["weight/reg"] == 0.0 and stl["history"][0]["weight/cls"] == 1.0
    # Δm in the summary equals the formula applied to the saved numbers, per seed then averaged
    summ = summarize(results)
    base = {
        "reg/mse": np.mean(
            [r["final"]["reg/mse"] for r in results if r["config"]["method"] == "single-task:0"]
        ),
        "cls/acc": np.mean(
            [r["final"]["cls/acc"] for r in results if r["config"]["method"] == "single-task:1"]
        ),
    }
    per_seed = []
    for r in results:
        if r["config"]["label"] == "mean":
            rel_mse = (r["final"]["reg/mse"] - base["reg/mse"]) / base["reg/mse"]
            rel_acc = (r["final"]["cls/acc"] - base["cls/acc"]) / base["cls/acc"]
            per_seed.append(100 * (rel_mse - rel_acc) / 2)
    row = next(x for x in summ["rows"] if x["label"] == "mean")
    assert row["delta_m"][0] == pytest.approx(np.mean(per_seed))
    assert row["delta_m"][1] == pytest.approx(np.std(per_seed, ddof=1))
    md = report(tmp_path).read_text()
    assert "| mean |" in md and "Δm% ↓" in md
    assert (tmp_path / "plots" / "tiny_curves.png").stat().st_size > 5_000
    assert (tmp_path / "plots" / "tiny_bars.png").stat().st_size > 5_000
    # a completed run is returned from disk, not retrained
    again = run(cfg.runs[0], tmp_path, show_progress=False)
    assert again["history"] == results[0]["history"]


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["mean", "famo"])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, method) -> None:
    raw = dict(
        methods=[method],
        seeds=[3],
        single_task=False,
        epochs=2,
        batch_size=16,
        data={"n_train": 64, "n_test": 32},
        checkpoint_every=2,
    )
    rc = _tiny(**raw).runs[0]
    full = run(rc, tmp_path / "a", show_progress=False)

    def stop(step: int) -> None:
        if step == 7:  # mid epoch 2, one step after the checkpoint at step 6
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(rc, tmp_path / "b", show_progress=False, on_step=stop)
    assert (tmp_path / "b" / rc.run_id / "checkpoint.pt").is_file()
    assert not (tmp_path / "b" / rc.run_id / "result.json").exists()
    resumed = run(rc, tmp_path / "b", show_progress=False)
    assert resumed["resumed"] == 1
    for a, b in zip(full["history"], resumed["history"], strict=True):
        for key in a:
            if not key.startswith("train_time"):
                assert a[key] == b[key], key  # bit-identical: same steps, same floats


def test_resume_refuses_a_different_config(tmp_path) -> None:
    rc = _tiny(methods=["mean"], seeds=[0], single_task=False, epochs=1, batch_size=16).runs[0]

    def stop(step: int) -> None:
        if step == 2:  # after the checkpoint at step 1
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(rc, tmp_path, show_progress=False, on_step=stop)
    from dataclasses import replace

    other = replace(rc, optimizer={"name": "sgd", "lr": 0.5})
    with pytest.raises(RuntimeError, match="different config"):
        run(other, tmp_path, show_progress=False)


# ------------------------------------------------------------------ toy and MultiMNIST composition
def test_toy_formula_and_front() -> None:
    # a direct transcription at one point (x, y) = (1, -2): only the quadratic branch is active
    x, y = 1.0, -2.0
    c = math.tanh(1.0)
    f1 = c * (((x - 7) ** 2 + 0.1 * (y + 8) ** 2) / 10 - 20)
    f2 = c * (((x + 7) ** 2 + 0.1 * (y + 8) ** 2) / 10 - 20)
    got = toy_losses(torch.tensor([x, y], dtype=torch.float64), scale=0.1)
    assert got.tolist() == pytest.approx([0.1 * f1, f2])
    front = pareto_front(scale=0.1, n=200)
    assert np.all(np.diff(front[:, 0]) > 0) and np.all(
        np.diff(front[:, 1]) < 0
    )  # non-dominated, sorted
    # the published front y = −8.3552 is (numerically) on ours: each of its points is within grid
    # accuracy
    xs = torch.linspace(-7, 7, 15, dtype=torch.float64)
    pub = toy_losses(torch.stack([xs, torch.full_like(xs, PARETO_Y)], -1), 0.1).numpy()
    gap = np.min(np.linalg.norm(pub[:, None] - front[None], axis=-1), axis=1)
    assert gap.max() < 0.1


def test_toy_trajectories_descend_and_primary_aux_protects_aux() -> None:
    import taskgrad.methods as M

    tr = trajectories(lambda: M.get("mgda"), steps=30, lr=0.05, record_every=10)
    assert tr["theta"].shape == (len(STARTS), 4, 2)
    # MGDA is a common descent direction: with Adam's small steps neither loss rises overall
    assert np.all(tr["losses"][:, -1] <= tr["losses"][:, 0] + 1e-6)
    pa = trajectories(lambda: M.get("primary-aux"), steps=30, lr=0.02, record_every=3)
    # PrimaryAux's direction d = Jᵀw at every recorded point: w₀ = 1 (the primary gradient is kept),
    # w₁ ≥ 0, and ⟨d, g₂⟩ ≥ 0 (the auxiliary loss does not rise to first order along −d)
    th = torch.tensor(pa["theta"].reshape(-1, 2), requires_grad=True)
    L = toy_losses(th, 0.1)
    g1 = torch.autograd.grad(L[:, 0].sum(), th, retain_graph=True)[0]
    g2 = torch.autograd.grad(L[:, 1].sum(), th)[0]
    w = torch.tensor(pa["weights"].reshape(-1, 2))
    d = w[:, :1] * g1 + w[:, 1:] * g2
    assert torch.allclose(w[:, 0], torch.ones_like(w[:, 0])) and bool((w[:, 1] >= 0).all())
    assert bool(((d * g2).sum(-1) >= -1e-9 * (g2.norm(dim=-1) * d.norm(dim=-1) + 1)).all())


def test_compose_pairs_places_and_maxes() -> None:
    a = np.zeros((1, 28, 28), dtype=np.uint8)
    b = np.zeros((1, 28, 28), dtype=np.uint8)
    a[0, 0, 0] = 200  # top-left pixel of a → canvas (1, 1)
    b[0, 27, 27] = 100  # bottom-right pixel of b → canvas (34, 34)
    a[0, 10, 10] = 50
    b[0, 4, 4] = 80  # both land on canvas (11, 11): the max (80) wins
    out = compose_pairs(a, b, out_size=36)  # no resize: check the canvas itself
    assert out[0, 1, 1] == 200 and out[0, 34, 34] == 100 and out[0, 11, 11] == 80
    assert out.sum() == 200 + 100 + 80
    small = compose_pairs(a, b)
    assert small.shape == (1, 28, 28) and small.dtype == np.uint8
    # two white images: their overlap (canvas 7..28) stays white after the resize (×28/36), and the
    # canvas corners covered by neither image (top right: rows 1..6, cols 29..34; bottom left) stay
    # black
    white = np.full((1, 28, 28), 255, dtype=np.uint8)
    w = compose_pairs(white, white)[0]
    assert w[7:21, 7:21].min() == 255
    assert w[1:4, 24:27].max() == 0 and w[24:27, 1:4].max() == 0


def test_toy_keeps_the_previous_weights_where_a_solver_does_not_converge() -> None:
    """A step without a solution (the method's solver stops unconverged, as Nash-MTL's Newton
    solve can on nearly opposite gradients) keeps that start's previous weights and is counted,
    as the reference implementations do when their solver fails; the other starts go on."""
    from taskgrad.methods import MethodConvergenceError, Weighting

    class FailsOnThirdCall(Weighting):
        needs = frozenset({"losses"})

        def __init__(self) -> None:
            self.calls = 0

        def compute(self, *, gram, losses):
            self.calls += 1
            if self.calls == 3:
                raise MethodConvergenceError("did not converge")
            return torch.softmax(losses * self.calls, dim=-1)

        def state_dict(self):  # per-start state: one instance per start
            return {"calls": self.calls}

        def load_state_dict(self, state) -> None:
            self.calls = state["calls"]

    tr = trajectories(FailsOnThirdCall, steps=4, lr=0.05, record_every=1)
    assert tr["undefined_steps"].tolist() == [1] * len(STARTS)
    assert np.array_equal(tr["weights"][:, 2], tr["weights"][:, 1])  # step 2 kept step 1's weights
    assert not np.array_equal(tr["weights"][:, 3], tr["weights"][:, 2])
