"""Rebuild tables and plots from saved runs: ``report(DIR)`` reads every ``result.json`` under
DIR (and ``toy.json`` of toy experiments) and writes ``DIR/report.md`` and ``DIR/plots/*.png``.

Per experiment: each method's test metrics at its selected epoch (the last one unless the config
selects by a validation criterion; the table then shows the selected epoch of each seed) as
mean ± std over seeds, Δm% against the single-task runs of the same experiment (computed per seed, then mean ± std; with several
baseline seeds their mean is the baseline; a config's fixed [baseline] table is used when the
experiment has no single-task runs), the training time per epoch and the median time per step.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import aggregate, delta_m, mean_std

__all__ = ["collect", "report", "summarize"]


def collect(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{experiment: [result, …]} for every complete run under ``root``."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in sorted(Path(root).rglob("result.json")):
        r = json.loads(p.read_text())
        out[r["config"]["experiment"]].append(r)
    return dict(out)


def summarize(results: list[dict[str, Any]], fixed_baseline: dict[str, float] | None = None) -> dict[str, Any]:
    """Aggregate one experiment's runs: rows per method label with mean ± std of every metric,
    Δm% (when a baseline exists), time per epoch and per step, and the number of seeds."""
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
    rows = []
    for label, runs in by_label.items():
        finals = [r["final"] for r in runs]
        sels = [r.get("selection") or {} for r in runs]
        row: dict[str, Any] = {"label": label, "method": runs[0]["config"]["method"], "seeds": len(runs),
                               "metrics": aggregate(finals),
                               "selected_epochs": [s.get("epoch", len(r["history"])) for s, r in zip(sels, runs)],
                               "criterion": sels[0].get("criterion", "last"),
                               "validation": sels[0].get("validation", "none"),
                               "time_per_epoch_s": mean_std([r["time_per_epoch_s"] for r in runs]),
                               "time_per_step_s": mean_std([r["time_per_step_s"] for r in runs]),
                               "epochs": runs[0]["config"]["epochs"]}
        if has_baseline and not row["method"].startswith("single-task"):
            row["delta_m"] = mean_std([delta_m(f, baseline, specs) for f in finals])
        rows.append(row)
    rows.sort(key=lambda r: (r["method"].startswith("single-task"), r.get("delta_m", (0.0, 0.0))[0], r["label"]))
    return {"specs": specs, "tasks": tasks, "rows": rows, "baseline": baseline if has_baseline else {},
            "baseline_source": source if has_baseline else "none", "by_label": by_label}


def _fmt(ms: tuple[float, float], digits: int = 4, pct: bool = False) -> str:
    m, s = ms
    if pct:
        return f"{m:+.2f} ± {s:.2f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(name: str, summ: dict[str, Any]) -> str:
    """A Markdown table of one experiment (Δm first, then every metric, then timings)."""
    specs = summ["specs"]
    selecting = any(r.get("criterion", "last") != "last" for r in summ["rows"])
    head = ["method", "seeds", "epochs"] + (["selected epoch"] if selecting else []) + ["Δm% ↓"] + [f"{k} {'↑' if h else '↓'}" for k, h in specs.items()]
    head += ["s / epoch", "ms / step"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summ["rows"]:
        dm = _fmt(r["delta_m"], pct=True) if "delta_m" in r else "n/a"
        cells = [r["label"], str(r["seeds"]), str(r["epochs"])]
        if selecting:
            cells.append(", ".join(str(e) for e in r.get("selected_epochs", [])))
        cells.append(dm)
        cells += [_fmt(r["metrics"][k]) if k in r["metrics"] else "n/a" for k in specs]
        cells += [f"{r['time_per_epoch_s'][0]:.1f}", f"{1e3 * r['time_per_step_s'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Δm baseline: {summ['baseline_source']}; mean ± sample std over seeds; "
                 "time per step is the median optimizer step (forward, Gram, weights, backward, update).")
    if selecting:
        crits = sorted({r["criterion"] for r in summ["rows"] if not r["method"].startswith("single-task")} or {"last"})
        vals = sorted({r["validation"] for r in summ["rows"]})
        lines.append(f"Model selection: test metrics at the epoch of the best validation {', '.join(crits)} "
                     f"(selected epoch per seed; single-task baselines select on their own task); "
                     f"validation: {'; '.join(vals)}.")
    return "\n".join(lines) + "\n"


def _plot_experiment(name: str, summ: dict[str, Any], plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    specs = list(summ["specs"])
    labels = [r["label"] for r in summ["rows"]]
    colors = {lbl: plt.cm.tab20(i % 20) for i, lbl in enumerate(labels)}
    # learning curves: every metric against epochs, mean over seeds
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.6), squeeze=False)
    for ax, key in zip(axes[0], specs):
        for lbl in labels:
            runs = summ["by_label"][lbl]
            curves = [[h[key] for h in r["history"]] for r in runs]
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves])
            ep = np.arange(1, n + 1)
            ax.plot(ep, arr.mean(0), ".-", color=colors[lbl], label=lbl)
            if arr.shape[0] > 1:
                ax.fill_between(ep, arr.mean(0) - arr.std(0), arr.mean(0) + arr.std(0), color=colors[lbl], alpha=0.15)
            vcurves = [[h.get(f"val/{key}", np.nan) for h in r["history"][:n]] for r in runs]
            varr = np.array(vcurves, dtype=float)
            if np.isfinite(varr).any():  # validation curve (dashed)
                ax.plot(ep, np.nanmean(varr, 0), "--", color=colors[lbl], lw=0.9)
            for r in runs:  # the selected epoch of each seed
                sel = (r.get("selection") or {}).get("epoch")
                if sel and (r.get("selection") or {}).get("criterion", "last") != "last" and sel <= n:
                    ax.plot([sel], [r["history"][sel - 1][key]], "o", mfc="none", color=colors[lbl], ms=7)
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[0][-1].legend(fontsize=7, loc="best")
    has_val = any(k.startswith("val/") for runs in summ["by_label"].values() for r in runs for k in r["history"][0])
    fig.suptitle(f"{name}: test metrics during training" + (" (dashed: validation; circles: selected epochs)" if has_val else ""))
    fig.tight_layout()
    written.append(plots / f"{name}_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    # per-task metrics and Δm and step time as bars
    panels = specs + (["Δm%"] if summ["baseline"] else []) + ["ms / step"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.3 * len(labels) + 2.2), squeeze=False)
    y = np.arange(len(labels))
    for ax, key in zip(axes[0], panels):
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
        ax.barh(y, vals, xerr=errs, color=[colors[lbl] for lbl in labels])
        ax.set_yticks(y, labels if ax is axes[0][0] else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(key, fontsize=9)
        finite = [v for v in vals if np.isfinite(v)]
        if key in summ["specs"] and finite:
            lo, hi = min(finite), max(finite)
            pad = 0.5 * (hi - lo) + 1e-3 * abs(hi)
            ax.set_xlim(lo - pad, hi + pad)
    fig.tight_layout()
    written.append(plots / f"{name}_bars.png")
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
    for ax, name in zip(axes.flat, names):
        ax.plot(front[:, 0], front[:, 1], "-", lw=5, color="#9a9aa2", label="Pareto front", zorder=1)
        for i, traj in enumerate(data["methods"][name]["losses"]):
            tr = np.array(traj)
            ax.plot(tr[:, 0], tr[:, 1], "-", lw=1.2, color=plt.cm.viridis(i / 5), zorder=2)
            ax.scatter(tr[0, 0], tr[0, 1], color="k", s=25, zorder=3)
            ax.scatter(tr[-1, 0], tr[-1, 1], color=plt.cm.viridis(i / 5), marker="*", s=90, edgecolor="k", zorder=4)
        und = int(np.sum(data["methods"][name].get("undefined_steps", [0])))
        ax.set_title(name + (f" ({und} undefined steps)" if und else ""), fontsize=10)
        ax.set_xlabel(r"$\ell_1$")
        ax.set_ylabel(r"$\ell_2$")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"CAGrad toy (scale {data['scale']}), Adam lr {data['lr']}, {data['steps']} steps; "
                 "dots: starts, stars: ends", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def toy_table(data: dict[str, Any]) -> str:
    """Markdown table: per method, the final losses and distance to the front of each start."""
    front = np.array(data["pareto_front"])
    lines = ["| method | final (ℓ₁, ℓ₂) per start | mean distance to front | undefined steps | s |",
             "|---|---|---|---|---|"]
    for name, d in data["methods"].items():
        ends = np.array([np.array(t)[-1] for t in d["losses"]])
        dist = np.min(np.linalg.norm(ends[:, None, :] - front[None], axis=-1), axis=1)
        cells = "; ".join(f"({a:.2f}, {b:.2f})" for a, b in ends)
        lines.append(f"| {name} | {cells} | {dist.mean():.3f} | {int(np.sum(d.get('undefined_steps', [0])))} | {d['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def report(root: str | Path, baselines: dict[str, dict[str, float]] | None = None, md_path: str | Path | None = None) -> Path:
    """Write ``root/report.md`` and ``root/plots/`` from every saved run under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory of saved runs.")
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    parts = ["# taskgrad benchmark report", "", f"Runs found under `{root}`.", ""]
    baselines = dict(baselines or {})
    for p in root.rglob("baseline.json"):
        baselines.setdefault(p.parent.name, json.loads(p.read_text()))
    found = False
    for p in sorted(root.rglob("toy.json")):
        data = json.loads(p.read_text())
        name = p.parent.name
        png = plot_toy(data, plots / f"{name}_pareto.png")
        parts += [f"### {name} (toy)", "", toy_table(data), f"![{name}]({png.relative_to(root)})", ""]
        found = True
    for name, results in collect(root).items():
        summ = summarize(results, baselines.get(name))
        parts.append(markdown_table(name, summ))
        for png in _plot_experiment(name, summ, plots):
            parts.append(f"![{png.stem}]({png.relative_to(root)})")
        parts.append("")
        found = True
    if not found:
        raise FileNotFoundError(f"no result.json or toy.json under {str(root)!r}: run `taskgrad bench` first.")
    out = root / "report.md"
    out.write_text("\n".join(parts))
    if md_path is not None:
        Path(md_path).write_text("\n".join(parts))
    return out
