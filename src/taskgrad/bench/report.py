"""Rebuild tables and plots from saved runs: ``report(DIR)`` reads every ``result.json`` under
DIR (and ``toy.json`` of toy experiments) and writes ``DIR/report.md`` and ``DIR/plots/*.png``.

Per experiment: each method's test metrics at its selected epoch (the last one unless the config
selects by a validation criterion; the table then shows the selected epoch of each seed) as
mean ± std over seeds, Δm% against the single-task runs of the same experiment (computed per seed,
then mean ± std; with several
baseline seeds their mean is the baseline; a config's fixed [baseline] table is used when the
experiment has no single-task runs), the training time per epoch and the median time per step.

Stale runs are never mixed in silently. With ``configs`` (``taskgrad report DIR --config CFG``, and
the report at the end of ``taskgrad bench CFG``), a saved run of an experiment of those configs is
*current* when its saved fingerprint is the one the config gives its (experiment, label, seed), or,
for a run the config does not list (a method or seed since removed), when its protocol (every
setting but method, label, method arguments, seed and device) is the config's. Without a config for
an experiment, its runs are grouped by protocol and, when there are several, the protocol of the
newest ``result.json`` (modification time) is kept. Every other run is *stale*: left out of the
tables and plots, listed with the settings it differs in under "stale runs (another config; rerun
with taskgrad bench … to include)", and counted in ``report.json`` (``excluded_stale``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from .config import NEW_FIELD_DEFAULTS, ExperimentConfig, RunConfig, run_id
from .metrics import aggregate, delta_m, mean_std

__all__ = [
    "bars_figure",
    "collect",
    "curves_figure",
    "method_styles",
    "plain_axes",
    "plot_experiment",
    "plot_toy",
    "protocol_fingerprint",
    "report",
    "split_stale",
    "summarize",
    "toy_table",
]

# the settings in which the runs of one protocol (one config) differ from each other
_RUN_FIELDS = ("method", "label", "method_kwargs", "seed")
STALE_HEADING = "stale runs (another config; rerun with taskgrad bench … to include)"


def _collect_entries(root: str | Path) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """{experiment: [(modification time of result.json, result), …]} under ``root``."""
    out: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for p in sorted(Path(root).rglob("result.json")):
        r = json.loads(p.read_text())
        out[r["config"]["experiment"]].append((p.stat().st_mtime, r))
    return dict(out)


def collect(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{experiment: [result, …]} for every complete run under ``root`` (stale ones included)."""
    return {name: [r for _, r in entries] for name, entries in _collect_entries(root).items()}


def _settings(config: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """A run's config as saved in result.json (JSON types), fields added later at their defaults
    when absent, ``device`` left out (it never changes a result).
    """
    raw = config.to_dict() if isinstance(config, RunConfig) else config
    d = json.loads(json.dumps(raw, default=str))
    for key, default in NEW_FIELD_DEFAULTS.items():
        d.setdefault(key, default)
    d.pop("device", None)
    return d


def protocol_fingerprint(config: dict[str, Any] | RunConfig) -> str:
    """Hash of a run's settings without method, label, method arguments, seed and device: the runs
    of one experiment are comparable (Δm against each other) iff their protocol fingerprints agree.
    """
    d = {k: v for k, v in _settings(config).items() if k not in _RUN_FIELDS}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _changes(
    saved: dict[str, Any], current: dict[str, Any] | RunConfig, skip: Sequence[str] = ()
) -> str:
    """The settings in which ``saved`` differs from ``current`` ("epochs 1 → 2, …", saved →
    current).
    """
    a, b = _settings(saved), _settings(current)
    keys = list(b) + [k for k in a if k not in b]
    diff = [
        f"{k} {a.get(k, '(absent)')!r} → {b.get(k, '(absent)')!r}"
        for k in keys
        if k not in skip
        and json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)
    ]
    return ", ".join(diff) or "the same settings, an older fingerprint rule"


def _run_id(r: dict[str, Any]) -> str:
    """The run's folder under the current naming rule (older results saved another spelling)."""
    c = r["config"]
    return run_id(c["experiment"], c["label"], c["seed"])


def _stale(r: dict[str, Any], reason: str, in_config: bool | None) -> dict[str, Any]:
    c = r["config"]
    return {
        "run_id": _run_id(r),
        "label": c["label"],
        "seed": c["seed"],
        "fingerprint": r.get("fingerprint"),
        "differs": reason,
        "in_config": in_config,
    }


def split_stale(
    entries: list[tuple[float, dict[str, Any]]], configs: Sequence[ExperimentConfig] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Split one experiment's saved runs ``[(mtime, result), …]`` into (current results, stale runs,
    what they were checked against). With ``configs`` (those of this experiment): current iff the
    saved fingerprint is the config's for that (experiment, label, seed), or, for a run the configs
    do not list, iff its protocol is theirs. Without: the protocol of the newest result is kept.
    A stale run is {run_id, label, seed, fingerprint, differs ("setting saved → current, …"),
    in_config
    (whether the configs list its (label, seed); None without configs)}.
    """
    current: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    if configs:
        expected = {r.run_id: r for cfg in configs for r in cfg.runs}
        protocols = {protocol_fingerprint(r): r for r in expected.values()}
        paths = [cfg.path for cfg in configs if cfg.path]
        against = ("config " + ", ".join(f"`{p}`" for p in paths)) if paths else "the given config"
        for _, r in entries:
            want = expected.get(_run_id(r))
            if want is not None:
                if r.get("fingerprint") == want.fingerprint():
                    current.append(r)
                else:
                    stale.append(_stale(r, _changes(r["config"], want), True))
            elif protocol_fingerprint(r["config"]) in protocols:
                current.append(r)
            else:
                ref = next(iter(protocols.values()))
                stale.append(
                    _stale(
                        r, "not in the config; " + _changes(r["config"], ref, _RUN_FIELDS), False
                    )
                )
        return current, stale, against
    groups: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for mtime, r in entries:
        groups[protocol_fingerprint(r["config"])].append((mtime, r))
    if len(groups) <= 1:
        return [r for _, r in entries], [], "one protocol (no config given)"
    keep = max(groups, key=lambda p: (max(m for m, _ in groups[p]), len(groups[p]), p))
    newest = max(groups[keep], key=lambda e: e[0])[1]
    for p, members in groups.items():
        for _, r in members:
            if p == keep:
                current.append(r)
            else:
                stale.append(_stale(r, _changes(r["config"], newest["config"], _RUN_FIELDS), None))
    return current, stale, f"those of the newest run `{_run_id(newest)}` (no config given)"


def stale_markdown(
    name: str,
    stale: list[dict[str, Any]],
    against: str,
    root: Path,
    configs: Sequence[ExperimentConfig] = (),
) -> str:
    """The "stale runs" section of one experiment: each left-out run, what differs, how to rerun."""
    n = len(stale)
    lines = [
        f"#### {name}: {STALE_HEADING}",
        "",
        (
            f"{n} saved run{'s' if n != 1 else ''} of `{name}` {'were' if n != 1 else 'was'} "
            "trained with other "
            f"settings than {against} and {'are' if n != 1 else 'is'} left out of the table and "
            "plots above."
        ),
    ]
    rerun = sorted({s["label"] for s in stale if s["in_config"] is not False})
    path = next((cfg.path for cfg in configs if cfg.path), None)
    if rerun:
        cmd = shlex.join(
            ["taskgrad", "bench", path or "CONFIG", "--out", str(root), "--methods", *rerun]
        )
        lines.append(
            f"To include {'them' if n > 1 else 'it'}, rerun `{cmd}`"
            + (
                "."
                if configs
                else " with the config of the kept runs as CONFIG, or report with "
                "`taskgrad report DIR --config CONFIG` to check every run against a config."
            )
        )
    if any(s["in_config"] is False for s in stale):
        lines.append(
            "A run *not in the config* cannot be rerun by it: add its method (or seed) back to the "
            "config, or delete its folder."
        )
    lines += ["", "| run | differs in (saved → current) |", "|---|---|"]
    lines += [
        f"| {s['run_id']} | {s['differs'].replace('|', chr(92) + '|')} |"
        for s in sorted(stale, key=lambda s: s["run_id"])
    ]
    return "\n".join(lines) + "\n"


def summarize(
    results: list[dict[str, Any]], fixed_baseline: dict[str, float] | None = None
) -> dict[str, Any]:
    """Aggregate one experiment's runs: rows per method label with mean ± std of every metric,
    Δm% (when a baseline exists), time per epoch and per step, and the number of seeds.
    """
    specs = {s["key"]: s["higher_is_better"] for s in results[0]["metric_specs"]}
    tasks = results[0]["tasks"]
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_label[r["config"]["label"]].append(r)
    baseline: dict[str, float] = {}
    for i, t in enumerate(tasks):
        stl = [r for r in results if r["config"]["method"] == f"single-task:{i}"]
        for key in specs:
            if key.split("/", 1)[0] == t and stl:
                baseline[key] = float(np.mean([r["final"][key] for r in stl]))
    source = "single-task runs"
    if len(baseline) < len(specs):
        baseline = dict(fixed_baseline or {})
        source = "config [baseline]" if baseline else "none"
    has_baseline = all(k in baseline for k in specs)
    unusable = [
        k for k in specs if has_baseline and not (math.isfinite(baseline[k]) and baseline[k] != 0)
    ]
    if unusable:  # Δm divides by the baseline: say why the column is empty instead of failing
        has_baseline = False
        zeros = ", ".join(f"{k} = {baseline[k]:g}" for k in unusable)
        source = f"none ({source}: {zeros}; Δm divides by it)"
    rows = []
    for label, runs in by_label.items():
        finals = [r["final"] for r in runs]
        sels = [r.get("selection") or {} for r in runs]
        row: dict[str, Any] = {
            "label": label,
            "method": runs[0]["config"]["method"],
            "seeds": len(runs),
            "metrics": aggregate(finals),
            "selected_epochs": [
                s.get("epoch", len(r["history"])) for s, r in zip(sels, runs, strict=True)
            ],
            "criterion": sels[0].get("criterion", "last"),
            "validation": sels[0].get("validation", "none"),
            "time_per_epoch_s": mean_std([r["time_per_epoch_s"] for r in runs]),
            "time_per_step_s": mean_std([r["time_per_step_s"] for r in runs]),
            "epochs": runs[0]["config"]["epochs"],
        }
        if has_baseline and not row["method"].startswith("single-task"):
            row["delta_m"] = mean_std([delta_m(f, baseline, specs) for f in finals])
        rows.append(row)
    rows.sort(
        key=lambda r: (
            r["method"].startswith("single-task"),
            r.get("delta_m", (0.0, 0.0))[0],
            r["label"],
        )
    )
    return {
        "specs": specs,
        "tasks": tasks,
        "rows": rows,
        "baseline": baseline if has_baseline else {},
        "baseline_source": source if has_baseline or unusable else "none",
        "by_label": by_label,
        "labels": _labels_note(results),
    }


def _labels_note(results: list[dict[str, Any]]) -> str | None:
    """One line on a partially labelled experiment's training labels (None when fully labelled):
    the labelled examples of each task (the range over the runs when they differ), the label seed
    and the rule for a batch without the primary's label.
    """
    infos = [r["labels"] for r in results if r.get("labels")]
    if not infos:
        return None
    tasks = results[0]["tasks"]
    parts = []
    for t in tasks:
        counts = sorted({int(i["n_labelled"][t]) for i in infos})
        totals = sorted({int(i["n_train"]) for i in infos})
        n = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"
        total = f"{totals[0]:,}" if len(totals) == 1 else f"{totals[0]:,}–{totals[-1]:,}"
        parts.append(f"{t} {n} of {total}")
    seeds = {i.get("seed") for i in infos}
    cfg = results[0]["config"]
    if seeds == {None}:
        seed = "none drawn (the data set's own labels)"
    elif cfg.get("label_seed") is None:
        seed = "each run's seed (the runs of one seed share their labels)"
    else:
        seed = f"{cfg['label_seed']} (every run shares its labels)"
    rule = cfg.get("absent_primary", "skip")
    return (
        f"Partially labelled training data: labelled examples {', '.join(parts)}; label seed: "
        f"{seed}; a batch without a label of the primary task: "
        + ("no step" if rule == "skip" else f"{rule} of the auxiliaries")
        + " (primary/auxiliary methods)."
    )


def _fmt(ms: tuple[float, float], n: int, digits: int = 4, pct: bool = False) -> str:
    """``mean ± std`` over ``n`` seeds; the mean alone for one seed (it has no spread to show)."""
    m, s = ms
    mean = f"{m:+.2f}" if pct else f"{m:.{digits}f}"
    if n < 2:
        return mean
    return mean + (f" ± {s:.2f}" if pct else f" ± {s:.{digits}f}")


def markdown_table(name: str, summ: dict[str, Any]) -> str:
    """A Markdown table of one experiment (Δm first, then every metric, then timings)."""
    specs = summ["specs"]
    selecting = any(r.get("criterion", "last") != "last" for r in summ["rows"])
    head = (
        ["method", "seeds", "epochs"]
        + (["selected epoch"] if selecting else [])
        + ["Δm% ↓"]
        + [f"{k} {'↑' if h else '↓'}" for k, h in specs.items()]
    )
    head += ["s / epoch", "ms / step"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summ["rows"]:
        dm = _fmt(r["delta_m"], r["seeds"], pct=True) if "delta_m" in r else "n/a"
        cells = [r["label"], str(r["seeds"]), str(r["epochs"])]
        if selecting:
            cells.append(", ".join(str(e) for e in r.get("selected_epochs", [])))
        cells.append(dm)
        cells += [_fmt(r["metrics"][k], r["seeds"]) if k in r["metrics"] else "n/a" for k in specs]
        cells += [f"{r['time_per_epoch_s'][0]:.1f}", f"{1e3 * r['time_per_step_s'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Δm baseline: {summ['baseline_source']}; mean ± sample std over seeds (the value alone "
        "for one seed); "
        "time per step is the median optimizer step (forward, Gram, weights, backward, update)."
    )
    if summ.get("labels"):
        lines.append(summ["labels"])
    if selecting:
        crits = sorted(
            {r["criterion"] for r in summ["rows"] if not r["method"].startswith("single-task")}
            or {"last"}
        )
        vals = sorted({r["validation"] for r in summ["rows"]})
        lines.append(
            f"Model selection: test metrics at the epoch of the best validation {', '.join(crits)} "
            f"(selected epoch per seed; single-task baselines select on their own task); "
            f"validation: {'; '.join(vals)}."
        )
    return "\n".join(lines) + "\n"


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")


def method_styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct look per method: the ten colours of the qualitative palette ``tab10``, then the
    same colours with the next marker (curves) and hatch (bars): 80 distinct styles, then repeats.
    """
    import matplotlib
    from matplotlib.colors import ListedColormap

    palette: Any = cast(ListedColormap, matplotlib.colormaps["tab10"]).colors
    return {
        lbl: {
            "color": palette[i % 10],
            "marker": _MARKERS[(i // 10) % len(_MARKERS)],
            "hatch": _HATCHES[(i // 10) % len(_HATCHES)],
        }
        for i, lbl in enumerate(labels)
    }


def plain_axes(ax: Any, integer_x: bool = False) -> None:
    """Tick labels as plain numbers (no offset, no scientific or ×10ⁿ notation), and integer
    ticks on the x axis when it counts something (epochs).
    """
    from matplotlib.ticker import LogFormatter, MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "linear":
            fmt = ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
        elif axis.get_scale() == "log":  # minor ticks labelled only on a short range, as by default
            axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves_figure(name: str, summ: dict[str, Any]) -> Any:
    """Every test metric (and its validation curve, dashed) against epochs, mean over seeds, one
    panel per metric and one style per method (:func:`method_styles`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(summ["specs"])
    labels = [r["label"] for r in summ["rows"]]
    styles = method_styles(labels)
    colors = {lbl: st["color"] for lbl, st in styles.items()}
    # learning curves: every metric against epochs, mean over seeds
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.6), squeeze=False)
    for ax, key in zip(axes[0], specs, strict=False):
        for lbl in labels:
            runs = summ["by_label"][lbl]
            curves = [[h[key] for h in r["history"]] for r in runs]
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves])
            ep = np.arange(1, n + 1)
            ax.plot(
                ep,
                arr.mean(0),
                "-",
                color=colors[lbl],
                marker=styles[lbl]["marker"],
                ms=4,
                label=lbl,
            )
            if arr.shape[0] > 1:
                ax.fill_between(
                    ep,
                    arr.mean(0) - arr.std(0),
                    arr.mean(0) + arr.std(0),
                    color=colors[lbl],
                    alpha=0.15,
                )
            vcurves = [[h.get(f"val/{key}", np.nan) for h in r["history"][:n]] for r in runs]
            varr = np.array(vcurves, dtype=float)
            if np.isfinite(varr).any():  # validation curve (dashed)
                ax.plot(ep, np.nanmean(varr, 0), "--", color=colors[lbl], lw=0.9)
            for r in runs:  # the selected epoch of each seed
                sel = (r.get("selection") or {}).get("epoch")
                if (
                    sel
                    and (r.get("selection") or {}).get("criterion", "last") != "last"
                    and sel <= n
                ):
                    ax.plot(
                        [sel],
                        [r["history"][sel - 1][key]],
                        "o",
                        mfc="none",
                        color=colors[lbl],
                        ms=7,
                    )
        ax.set_title(key)
        ax.set_xlabel("epoch")
        plain_axes(ax, integer_x=True)
    axes[0][-1].legend(fontsize=7, loc="best")
    has_val = any(
        k.startswith("val/")
        for runs in summ["by_label"].values()
        for r in runs
        for k in r["history"][0]
    )
    fig.suptitle(
        f"{name}: test metrics during training"
        + (" (dashed: validation; circles: selected epochs)" if has_val else "")
    )
    fig.tight_layout()
    return fig


def bars_figure(name: str, summ: dict[str, Any]) -> Any:
    """Per method: each metric, Δm% (with a baseline) and the time per step as horizontal bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(summ["specs"])
    labels = [r["label"] for r in summ["rows"]]
    styles = method_styles(labels)
    colors = {lbl: st["color"] for lbl, st in styles.items()}
    panels = specs + (["Δm%"] if summ["baseline"] else []) + ["ms / step"]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 0.3 * len(labels) + 2.2), squeeze=False
    )
    y = np.arange(len(labels))
    for ax, key in zip(axes[0], panels, strict=False):
        vals, errs = [], []
        for r in summ["rows"]:
            if key == "Δm%":
                v = r.get("delta_m", (np.nan, 0.0))
            elif key == "ms / step":
                v = (1e3 * r["time_per_step_s"][0], 1e3 * r["time_per_step_s"][1])
            else:
                v = r["metrics"].get(key, (np.nan, 0.0))
            vals.append(v[0])
            errs.append(v[1])
        ax.barh(
            y,
            vals,
            xerr=errs,
            color=[colors[lbl] for lbl in labels],
            hatch=[styles[lbl]["hatch"] for lbl in labels],
            edgecolor="white",
        )
        plain_axes(ax)
        ax.set_yticks(y, labels if ax is axes[0][0] else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(key, fontsize=9)
        finite = [v for v in vals if np.isfinite(v)]
        if key in summ["specs"] and finite:
            lo, hi = min(finite), max(finite)
            pad = 0.5 * (hi - lo) + 1e-3 * abs(hi)
            ax.set_xlim(lo - pad, hi + pad)
    with warnings.catch_warnings():  # many methods: matplotlib may not fit every label, and says so
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def plot_experiment(name: str, summ: dict[str, Any], plots: Path) -> list[Path]:
    """Save ``<name>_curves.png`` and ``<name>_bars.png`` in ``plots``; returns their paths."""
    import matplotlib.pyplot as plt

    written = []
    for kind, make in (("curves", curves_figure), ("bars", bars_figure)):
        fig = make(name, summ)
        written.append(plots / f"{name}_{kind}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_toy(data: dict[str, Any], path: Path) -> Path:
    """Pareto front of the CAGrad toy in loss space with each method's trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["methods"])
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    front = np.array(data["pareto_front"])
    for ax, name in zip(axes.flat, names, strict=False):
        ax.plot(
            front[:, 0], front[:, 1], "-", lw=5, color="#9a9aa2", label="Pareto front", zorder=1
        )
        for i, traj in enumerate(data["methods"][name]["losses"]):
            tr = np.array(traj)
            ax.plot(tr[:, 0], tr[:, 1], "-", lw=1.2, color=plt.cm.viridis(i / 5), zorder=2)
            ax.scatter(tr[0, 0], tr[0, 1], color="k", s=25, zorder=3)
            ax.scatter(
                tr[-1, 0],
                tr[-1, 1],
                color=plt.cm.viridis(i / 5),
                marker="*",
                s=90,
                edgecolor="k",
                zorder=4,
            )
        und = int(np.sum(data["methods"][name].get("undefined_steps", [0])))
        ax.set_title(name + (f" ({und} undefined steps)" if und else ""), fontsize=10)
        ax.set_xlabel(r"$\ell_1$")
        plain_axes(ax)
        ax.set_ylabel(r"$\ell_2$")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        f"CAGrad toy (scale {data['scale']}), Adam lr {data['lr']}, {data['steps']} steps; "
        "dots: starts, stars: ends",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def toy_table(data: dict[str, Any]) -> str:
    """Markdown table: per method, the final losses and distance to the front of each start."""
    front = np.array(data["pareto_front"])
    lines = [
        "| method | final (ℓ₁, ℓ₂) per start | mean distance to front | undefined steps | s |",
        "|---|---|---|---|---|",
    ]
    for name, d in data["methods"].items():
        ends = np.array([np.array(t)[-1] for t in d["losses"]])
        dist = np.min(np.linalg.norm(ends[:, None, :] - front[None], axis=-1), axis=1)
        cells = "; ".join(f"({a:.2f}, {b:.2f})" for a, b in ends)
        lines.append(
            f"| {name} | {cells} | {dist.mean():.3f} | "
            f"{int(np.sum(d.get('undefined_steps', [0])))} | {d['seconds']:.1f} |"
        )
    for name, msg in data.get("failed", {}).items():
        lines.append(f"| {name} | failed: {msg.replace('|', chr(92) + '|')} | n/a | n/a | n/a |")
    return "\n".join(lines) + "\n"


def _strict_json(v: Any) -> Any:
    """``v`` with tuples as lists and non-finite floats as None (strict JSON has no
    NaN/Infinity).
    """
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_strict_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    return v


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _strict_json(v) for k, v in row.items()}


def report(
    root: str | Path,
    baselines: dict[str, dict[str, float]] | None = None,
    md_path: str | Path | None = None,
    configs: Sequence[ExperimentConfig] | None = None,
    plots: bool = True,
) -> Path:
    """Write ``root/report.md``, ``root/report.json`` and ``root/plots/`` from the saved runs under
    ``root``. Runs of another config than ``configs`` (for their experiments) or, for an experiment
    without one, of another protocol than its newest run are stale: left out of the tables, listed
    in a "stale runs" section, and counted in report.json's ``excluded_stale`` (see the module).
    ``plots=False`` writes the tables only (much faster with many methods).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory of saved runs.")
    by_name: dict[str, list[ExperimentConfig]] = defaultdict(list)
    for cfg in configs or ():
        if cfg.kind == "train":
            by_name[cfg.name].append(cfg)
    plots_dir = root / "plots"
    if plots:
        plots_dir.mkdir(exist_ok=True)
    head = ["# taskgrad benchmark report", "", f"Runs found under `{root}`."]
    if by_name:
        paths = [cfg.path or cfg.name for cfgs in by_name.values() for cfg in cfgs]
        head.append(
            "Checked against the configs "
            + ", ".join(f"`{p}`" for p in paths)
            + " (other experiments: against the settings of their newest run)."
        )
    parts: list[str] = []
    baselines = dict(baselines or {})
    for name, cfgs in by_name.items():
        if cfgs[-1].baseline:
            baselines.setdefault(name, dict(cfgs[-1].baseline))
    for p in root.rglob("baseline.json"):
        baselines.setdefault(p.parent.name, json.loads(p.read_text()))
    summary: dict[str, Any] = {
        "root": str(root),
        "configs": [c.path or c.name for cs in by_name.values() for c in cs],
        "excluded_stale": 0,
        "experiments": {},
    }
    found = False
    for p in sorted(root.rglob("toy.json")):
        data = json.loads(p.read_text())
        name = p.parent.name
        parts += [f"### {name} (toy)", "", toy_table(data)]
        if data["methods"] and plots:
            png = plot_toy(data, plots_dir / f"{name}_pareto.png")
            parts.append(f"![{name}]({png.relative_to(root)})")
        parts.append("")
        found = True
    for name, entries in _collect_entries(root).items():
        found = True
        results, stale, against = split_stale(entries, by_name.get(name, ()))
        exp: dict[str, Any] = {
            "checked_against": against,
            "runs": len(results),
            "excluded_stale": len(stale),
            "stale_runs": stale,
        }
        if results:
            summ = summarize(results, baselines.get(name))
            summ["excluded_stale"] = len(stale)
            parts.append(markdown_table(name, summ))
            for png in plot_experiment(name, summ, plots_dir) if plots else []:
                parts.append(f"![{png.stem}]({png.relative_to(root)})")
            parts.append("")
            exp.update(
                baseline=summ["baseline"],
                baseline_source=summ["baseline_source"],
                rows=[_json_row(r) for r in summ["rows"]],
            )
        else:
            parts += [f"### {name}", "", f"No saved run of {against}: nothing to tabulate.", ""]
            exp.update(baseline={}, baseline_source="none", rows=[])
        if stale:
            parts.append(stale_markdown(name, stale, against, root, by_name.get(name, ())))
        summary["experiments"][name] = exp
        summary["excluded_stale"] += len(stale)
    if not found:
        raise FileNotFoundError(
            f"no result.json or toy.json under {str(root)!r}: run `taskgrad bench` first."
        )
    n = summary["excluded_stale"]
    if n:
        head.append(
            f"**{n} stale run{'s' if n != 1 else ''} (another config) left out of the tables**: "
            "listed "
            "after each table under “stale runs”."
        )
    text = "\n".join(head + [""] + parts)
    out = root / "report.md"
    out.write_text(text)
    (root / "report.json").write_text(
        json.dumps(_strict_json(summary), indent=1, default=str, allow_nan=False)
    )
    if md_path is not None:
        Path(md_path).write_text(text)
    return out
