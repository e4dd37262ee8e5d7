"""The plots read plainly: whole-number epoch and count ticks, tick labels without ×10ⁿ or an
offset, a distinct look per method, and a loss plot in the CSV-log report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from taskgrad.bench.report import bars_figure, curves_figure, method_styles, plain_axes  # noqa: E402


def _labels(ax, axis: str = "y", minor: bool = False) -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels(minor=minor) if axis == "y" else ax.get_xticklabels(minor=minor)
    return [t.get_text() for t in ticks if t.get_text()]


def _summary(n_methods: int, epochs: int = 3) -> dict:
    specs = {"a/loss": False, "b/acc": True}
    by_label, rows = {}, []
    for i in range(n_methods):
        lbl = f"m{i}"
        hist = [
            {"epoch": e + 1, "a/loss": 2.6 + 0.001 * (i + e), "b/acc": 0.9 + 0.0001 * i}
            for e in range(epochs)
        ]
        by_label[lbl] = [{"history": hist, "selection": {"criterion": "last"}}]
        rows.append(
            {
                "label": lbl,
                "method": lbl,
                "metrics": {"a/loss": (2.6, 0.0), "b/acc": (0.9, 0.0)},
                "time_per_step_s": (0.01, 0.0),
            }
        )
    return {"specs": specs, "rows": rows, "by_label": by_label, "baseline": {}}


def test_forty_methods_get_forty_distinct_styles() -> None:
    styles = method_styles([f"m{i}" for i in range(40)])
    assert len({(tuple(s["color"]), s["marker"]) for s in styles.values()}) == 40
    assert len({(tuple(s["color"]), s["hatch"]) for s in styles.values()}) == 40
    assert len({tuple(s["color"]) for s in styles.values()}) == 10  # tab10: colours far apart


def test_learning_curves_have_epoch_ticks_and_plain_numbers() -> None:
    fig = curves_figure("exp", _summary(12, epochs=3))
    try:
        for ax in fig.axes:
            xs = [float(t.replace("−", "-")) for t in _labels(ax, "x")]
            assert xs and all(x == int(x) for x in xs)  # epochs 1, 2, 3: no 1.5
            ys = _labels(ax)
            assert ys and not any("×" in t or "e" in t.lower() for t in ys)
            assert ax.yaxis.get_offset_text().get_text() == ""  # no "+2.6" offset above the axis
        lines = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
        assert (
            len(
                {
                    (
                        ln.get_color()
                        if isinstance(ln.get_color(), str)
                        else tuple(ln.get_color()),
                        ln.get_marker(),
                    )
                    for ln in lines
                }
            )
            == 12
        )
    finally:
        plt.close(fig)
    fig = bars_figure("exp", _summary(3))
    try:
        assert all(ax.xaxis.get_offset_text().get_text() == "" for ax in fig.axes)
    finally:
        plt.close(fig)


def test_log_axes_show_plain_numbers() -> None:
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [2.1, 2.6, 3.4])
    ax.set_yscale("log")
    before = _labels(ax, minor=True)
    plain_axes(ax)
    after = _labels(ax, minor=True)
    plt.close(fig)
    assert any("times" in t or "×" in t for t in before)  # matplotlib's default: 2×10⁰ …
    assert after and "2.6" in after and not any("times" in t or "×" in t for t in after)


def test_demo_loss_axis_shows_plain_numbers() -> None:
    from taskgrad import demo

    runs = {
        name: demo.run(m, steps=10)
        for name, m in {
            "Mean": demo.Mean(),
            "PrimaryAux": demo.PrimaryAux(),
            "primary only": demo.PrimaryOnly(),
            "PrimaryAux, margin 0.1": demo.PrimaryAux(margin=0.1, relative_margin=True),
        }.items()
    }
    fig = demo.figure(runs)
    try:
        labels = _labels(fig.axes[1]) + _labels(fig.axes[1], minor=True)
        assert labels and not any("times" in t or "×" in t for t in labels)
    finally:
        plt.close(fig)


def test_log_report_plots_losses_with_whole_number_counts(tmp_path) -> None:
    pytest.importorskip("taskgrad.tracking")
    from taskgrad.tracking.plots import plot_conditioning, plot_losses

    log = {
        "loss/a": ([1, 2, 3, 4], [2.1, 2.6, 3.0, 3.4]),
        "loss/b": ([1, 2, 3, 4], [2.2, 2.5, 2.9, 3.1]),
        "gram/cond": ([1, 2, 3, 4], [10.0, 20.0, 15.0, 30.0]),
        "gram/active_constraints": ([1, 2, 3, 4], [0.0, 1.0, 1.0, 0.0]),
    }
    fig = plot_losses(log)
    try:
        labels = _labels(fig.axes[0]) + _labels(fig.axes[0], minor=True)
        assert labels and not any("times" in t or "×" in t for t in labels)
    finally:
        plt.close(fig)
    fig = plot_conditioning(log)
    try:
        counts = [float(t.replace("−", "-")) for t in _labels(fig.axes[1])]
        assert counts and all(c == int(c) for c in counts)  # no 0.5 ticks for a count
    finally:
        plt.close(fig)
