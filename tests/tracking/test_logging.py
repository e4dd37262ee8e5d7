"""Logging: statistics against direct computations, CSV/TensorBoard round trips, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taskgrad
from taskgrad.tracking import (
    CSVLogger,
    MemoryLogger,
    MultiLogger,
    TensorBoardLogger,
    active_constraints,
    condition_number,
    cosine_matrix,
    gradient_cosines,
    plot_cosine_heatmap,
    plot_weights,
    read_csv_log,
    report,
    step_scalars,
    tensorboard_available,
)
from taskgrad.training import backward


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 5), p=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_cosines_and_condition_match_explicit_gradients(k, p, seed):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(k, p, generator=g, dtype=torch.float64)
    C = gradient_cosines(J @ J.T)
    for i in range(k):
        for j in range(k):
            direct = float(J[i] @ J[j] / (J[i].norm() * J[j].norm()))
            assert C[i, j].item() == pytest.approx(direct, abs=1e-12)
    kappa = condition_number(J @ J.T)
    if p < k:  # rank-deficient: k gradients in p < k dimensions
        assert kappa == math.inf
    else:
        s = np.linalg.svd(J.numpy(), compute_uv=False)  # κ(JJᵀ) = (σ_max/σ_min)²
        assert kappa == pytest.approx((s[0] / s[-1]) ** 2, rel=1e-6)


def test_zero_gradient_has_no_cosine_and_no_nan():
    J = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    out = step_scalars(torch.tensor([0.5, 0.0, 0.5]), J @ J.T, names=["a", "b", "c"])
    assert "cos/a|b" not in out and "cos/b|c" not in out
    assert out["cos/a|c"] == pytest.approx(1 / math.sqrt(2))
    assert out["gram/zero_gradient_tasks"] == 1.0
    assert out["weights/zero"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())


def test_active_constraints_of_primary_aux():
    """An auxiliary that conflicts with the primary is projected onto ⟨u, gᵢ⟩ = 0: 1 active; an
    aligned auxiliary is not."""
    g0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    g_conflict = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    g_aligned = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    J = torch.stack([g0, g_conflict, g_aligned])
    G = J @ J.T
    w = taskgrad.PrimaryAux()(gram=G)
    u = w @ J
    assert abs(float(u @ g_conflict)) < 1e-12 < float(u @ g_aligned)  # the KKT picture
    assert active_constraints(G, w) == 1
    assert (
        active_constraints(G, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)) == 0
    )  # g0 alone: ⟨g0, g_c⟩ = −1


def test_csv_round_trip_and_nan_refused(tmp_path):
    path = tmp_path / "log.csv"
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    lin = torch.nn.Linear(3, 4)
    head = [torch.nn.Linear(4, 1) for _ in range(3)]
    written = []
    with CSVLogger(path, names=["a", "b", "c"]) as log:
        for t in range(4):
            z = torch.tanh(lin(x))
            losses = [(h(z) ** 2).mean() + i for i, h in enumerate(head)]
            res = backward(losses, method=taskgrad.MGDA(), features=z)
            written.append(log.log_step(t, res))
        with pytest.raises(ValueError, match="NaN"):
            log.log(99, {"x": float("nan")})
    back = read_csv_log(path)
    for t, row in enumerate(written):
        for name, value in row.items():
            assert back[name][0][t] == t
            assert back[name][1][t] == value  # repr round-trips floats exactly
    assert {"weight/a", "loss/c", "cos/a|b", "gram/cond", "gram/active_constraints"} <= set(back)


def test_skipped_step_logged_without_values():
    log = MemoryLogger()

    class R:
        skipped = True
        weights = torch.full((2,), float("nan"))

    assert log.log_step(3, R()) == {"skipped": 1.0}
    assert log.rows == [(3, "skipped", 1.0)]


def test_every_and_multi_logger():
    a, b = MemoryLogger(), MemoryLogger()
    multi = MultiLogger([a, b], every=2)

    class R:
        skipped = False
        weights = torch.tensor([0.25, 0.75])
        gram = None
        losses = None

    for t in range(5):
        multi.log_step(t, R())
    assert [r[0] for r in a.rows if r[1] == "weight/task0"] == [0, 2, 4]
    assert a.rows == b.rows


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard not installed (optional)")
def test_tensorboard_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(tmp_path) as log:
        for t in range(3):
            log.log(t, {"weight/a": 0.1 * t, "gram/cond": 2.0 + t})
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    vals = [(e.step, e.value) for e in acc.Scalars("weight/a")]
    assert [s for s, _ in vals] == [0, 1, 2]
    assert [v for _, v in vals] == pytest.approx([0.0, 0.1, 0.2])


def test_tensorboard_absent_gives_clear_error(monkeypatch):
    import taskgrad.tracking.loggers as lg

    monkeypatch.setattr(lg, "tensorboard_available", lambda: False)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        lg.TensorBoardLogger("unused")


@pytest.mark.slow
def test_plots_show_the_logged_values(tmp_path):
    log = MemoryLogger(names=["a", "b", "c"])
    g = torch.Generator().manual_seed(1)
    grams = []
    for t in range(6):
        J = torch.randn(3, 5, generator=g, dtype=torch.float64)
        grams.append(J @ J.T)

        class R:
            skipped = False
            weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
            gram = grams[-1]
            losses = torch.tensor([1.0, 2.0, 3.0])

        log.log_step(t, R())
    series = log.series()
    names, steps, M = cosine_matrix(series)
    assert names == ["a|b", "a|c", "b|c"] and steps == list(range(6))
    for t, G in enumerate(grams):
        C = gradient_cosines(G)
        assert M[:, t] == pytest.approx([C[0, 1].item(), C[0, 2].item(), C[1, 2].item()])
    fig = plot_cosine_heatmap(series, tmp_path / "cos.png")
    assert np.allclose(np.ma.getdata(fig.axes[0].images[0].get_array()), M)
    fig = plot_weights(series, tmp_path / "w.png")
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [
        [0.2] * 6,
        [0.3] * 6,
        [0.5] * 6,
    ]
    assert (tmp_path / "cos.png").stat().st_size > 1000


@pytest.mark.slow
def test_report_writes_plots(tmp_path):
    with CSVLogger(tmp_path / "log.csv") as log:
        for t in range(3):
            log.log(
                t,
                {
                    "weight/task0": 0.5,
                    "weight/task1": 0.5,
                    "cos/task0|task1": -0.2 * t,
                    "gram/cond": [2.0, math.inf, 3.0][t],
                    "gram/active_constraints": 1.0,
                },
            )
    files = report(tmp_path / "log.csv", tmp_path / "plots")
    assert sorted(f.name for f in files) == ["conditioning.png", "cosines.png", "weights.png"]
    # the same through the command line: `taskgrad report LOG.csv --out DIR`
    from taskgrad.cli import main as cli_main

    assert cli_main(["report", str(tmp_path / "log.csv"), "--out", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "conditioning.png",
        "cosines.png",
        "weights.png",
    ]
    with pytest.raises(ValueError, match="not a taskgrad CSV log"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        read_csv_log(tmp_path / "bad.csv")


def _result(w):
    class R:
        skipped = False
        weights = torch.tensor(w)
        gram = None
        losses = torch.tensor([1.0, 2.0])

    return R()


def test_multi_logger_keeps_its_childrens_task_names(tmp_path):
    a = MemoryLogger(names=["left", "right"])
    with CSVLogger(tmp_path / "log.csv", names=["left", "right"]) as b:
        multi = MultiLogger([a, b])
        assert multi.names == ["left", "right"]
        multi.log_step(0, _result([0.25, 0.75]))
    assert {n for _, n, _ in a.rows} >= {"weight/left", "weight/right", "loss/left"}
    assert read_csv_log(tmp_path / "log.csv")["weight/right"] == ([0], [0.75])
    # names given to the MultiLogger (or set later, as the Lightning mixin does) reach the children
    c, d = MemoryLogger(), MemoryLogger()
    late = MultiLogger([c, d])
    late.names = ["x", "y"]
    late.log_step(0, _result([0.5, 0.5]))
    assert c.names == d.names == ["x", "y"] and "weight/y" in {n for _, n, _ in d.rows}
    with pytest.raises(ValueError, match="different task names"):
        MultiLogger([MemoryLogger(names=["a", "b"]), MemoryLogger(names=["b", "a"])])


@pytest.mark.parametrize("content", ["", "step,name,value\n", "step,name,value\n3,skipped,1.0\n"])
def test_report_of_a_log_with_nothing_to_plot_warns_instead_of_failing(tmp_path, content):
    from taskgrad.tracking import NothingToPlotWarning

    (tmp_path / "log.csv").write_text(content)
    with pytest.warns(NothingToPlotWarning, match="no weights, cosines or Gram statistics.*every"):
        assert report(tmp_path / "log.csv", tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()


def test_short_run_with_every_larger_than_the_run_reports_nothing_without_crashing(tmp_path):
    from taskgrad.tracking import NothingToPlotWarning

    with CSVLogger(tmp_path / "log.csv", names=["a", "b"], every=5) as log:
        for t in range(1, 5):  # steps 1..4: none is a multiple of every=5
            log.log_step(t, _result([0.5, 0.5]))
    with pytest.warns(NothingToPlotWarning, match="no logged step"):
        assert report(tmp_path / "log.csv", tmp_path / "plots") == []


def test_report_draws_the_logged_losses(tmp_path):
    with CSVLogger(tmp_path / "log.csv", names=["a", "b"]) as log:
        for t in range(4):
            log.log_step(t, _result([0.5, 0.5]))
    files = report(tmp_path / "log.csv", tmp_path / "plots")
    assert sorted(f.name for f in files) == ["losses.png", "weights.png"]


def test_cli_report_of_an_empty_log_prints_the_reason(tmp_path, capsys):
    from taskgrad.cli import main as cli_main

    (tmp_path / "log.csv").write_text("step,name,value\n")
    assert cli_main(["report", str(tmp_path / "log.csv"), "--out", str(tmp_path / "plots")]) == 0
    assert "no weights, cosines or Gram statistics to plot" in " ".join(
        capsys.readouterr().out.split()
    )
