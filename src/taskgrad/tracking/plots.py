"""Plots of a training log: gradient cosines over training (heat map) and weights over time.

All functions take the ``{name: (steps, values)}`` mapping of :func:`read_csv_log` (or
``MemoryLogger.series()``) and return the matplotlib Figure (``path`` also saves it).
:func:`report` writes every plot for a CSV log: ``taskgrad report LOG.csv``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NothingToPlotWarning",
    "cosine_matrix",
    "plot_conditioning",
    "plot_cosine_heatmap",
    "plot_losses",
    "plot_weights",
    "report",
]

Series = Mapping[str, tuple[list[int], list[float]]]


def _mpl() -> Any:
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _prefixed(log: Series, prefix: str) -> list[str]:
    return [n for n in log if n.startswith(prefix)]


def cosine_matrix(log: Series) -> tuple[list[str], list[int], np.ndarray]:
    """(pair names, steps, M) with M[p, t] = cos of pair p at step t (NaN where not logged)."""
    pairs = _prefixed(log, "cos/")
    if not pairs:
        raise ValueError(
            "the log has no gradient cosines (cos/…): log steps whose result carries the Gram."
        )
    steps = sorted({s for p in pairs for s in log[p][0]})
    col = {s: i for i, s in enumerate(steps)}
    M = np.full((len(pairs), len(steps)), np.nan)
    for r, p in enumerate(pairs):
        for s, v in zip(*log[p], strict=True):
            M[r, col[s]] = v
    return [p[len("cos/") :] for p in pairs], steps, M


def plot_cosine_heatmap(
    log: Series, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Any:
    """Heat map: one row per task pair, one column per logged step, colour cos(gᵢ, gⱼ) ∈ [−1, 1]."""
    plt = _mpl()
    names, steps, M = cosine_matrix(log)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    im = ax.imshow(
        np.ma.masked_invalid(M),
        aspect="auto",
        cmap="RdBu",
        vmin=-1,
        vmax=1,
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(names) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("step")
    ax.set_title(title or "cosine between task gradients")
    fig.colorbar(im, ax=ax, label="cos(gᵢ, gⱼ)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_weights(
    log: Series, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Any:
    """One line per task: its weight wᵢ against the step."""
    return _per_task_lines(log, "weight", "weights", path, title, log_if_positive=False)


def _plain_numbers(ax: Any) -> None:
    """Tick labels of a log-scale y axis as plain numbers (2.6, not 2.6×10⁰); minor ticks are
    labelled only on a short range, as matplotlib's default does.
    """
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def plot_losses(
    log: Series, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Any:
    """One line per task: its loss Lᵢ against the step (log scale when every value is positive)."""
    return _per_task_lines(log, "loss", "losses", path, title, log_if_positive=True)


def _per_task_lines(
    log: Series,
    kind: str,
    plural: str,
    path: str | os.PathLike | None,
    title: str | None,
    *,
    log_if_positive: bool,
) -> Any:
    """One line per series ``{kind}/<task>`` of the log against the step, labelled by task
    (``plural`` names them in the title and errors); the y axis on a log scale when
    ``log_if_positive`` and every value is positive.
    """
    plt = _mpl()
    prefix = f"{kind}/"
    names = _prefixed(log, prefix)
    if not names:
        raise ValueError(f"the log has no task {plural} ({prefix}…).")
    fig, ax = plt.subplots(figsize=(8, 4))
    for n in names:
        ax.plot(log[n][0], log[n][1], label=n[len(prefix) :], lw=1.2)
    if log_if_positive and all(v > 0 for n in names for v in log[n][1]):
        ax.set_yscale("log")
        _plain_numbers(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(kind)
    ax.set_title(title or f"task {plural}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_conditioning(log: Series, path: str | os.PathLike | None = None) -> Any:
    """κ(G) (log scale; infinite values drawn at the top edge) and the active-constraint count."""
    plt = _mpl()
    if "gram/cond" not in log:
        raise ValueError("the log has no gram/cond entries.")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    s, v = np.asarray(log["gram/cond"][0]), np.asarray(log["gram/cond"][1], dtype=float)
    finite = np.isfinite(v)
    a1.semilogy(s[finite], v[finite], lw=1.2)
    if (~finite).any():
        top = v[finite].max() if finite.any() else 1.0
        a1.scatter(
            s[~finite],
            np.full((~finite).sum(), top),
            marker="^",
            color="red",
            label="singular (κ = ∞)",
        )
        a1.legend(fontsize=8)
    a1.set_ylabel("κ(G)")
    _plain_numbers(a1)
    if "gram/active_constraints" in log:
        a2.step(log["gram/active_constraints"][0], log["gram/active_constraints"][1], where="post")
    a2.set_ylabel("active constraints")
    from matplotlib.ticker import MaxNLocator

    a2.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count: whole-number ticks
    a2.set_xlabel("step")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


class NothingToPlotWarning(UserWarning):
    """A training log holds nothing :func:`report` can draw (e.g. a run shorter than the logger's
    ``every``); the report writes no file and says so instead of failing.
    """


def report(csv_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write weights.png, cosines.png, conditioning.png and losses.png (those the log has data for).

    Returns the files written; a log with nothing to draw (empty, or only skipped steps) writes
    none and warns (:class:`NothingToPlotWarning`) with what the log holds.
    """
    from .loggers import read_csv_log

    plt = _mpl()
    log = read_csv_log(csv_path)
    written = []
    for fname, fn in (
        ("weights.png", plot_weights),
        ("cosines.png", plot_cosine_heatmap),
        ("conditioning.png", plot_conditioning),
        ("losses.png", plot_losses),
    ):
        try:
            fig = fn(log, None)
        except ValueError:
            continue  # nothing of that kind in the log
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        written.append(out / fname)
    if not written:
        steps = sorted({s for steps, _ in log.values() for s in steps})
        held = (
            f"{len(steps)} logged step(s), {steps[0]}..{steps[-1]}, with only "
            f"{', '.join(sorted(log))}"
            if steps
            else "no logged step"
        )
        warnings.warn(
            f"{csv_path} has no weights, cosines or Gram statistics to plot ({held}); no plot was "
            "written. A run shorter than the logger's `every` steps logs nothing: train longer or "
            "pass a smaller `every`.",
            NothingToPlotWarning,
            stacklevel=2,
        )
    return written
