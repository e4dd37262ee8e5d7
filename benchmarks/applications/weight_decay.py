"""Coefficient-free weight decay on small Fashion-MNIST training sets.

Methods (all on Adam, same lr, batch size and number of steps):
  none       Adam, no decay
  adamw      AdamW with weight_decay over a grid; "best" = the grid value with the best
             validation accuracy (5k held-out training images), plus the spread over the grid
  cf_l2      CoefficientFreeDecay(Adam, norm="l2"): no step increases ‖θ‖² to first order
  cf_l1      CoefficientFreeDecay(Adam, norm="l1"): no step increases ‖θ‖₁ to first order

Usage:
  .venv/bin/python benchmarks/applications/weight_decay.py --config
  benchmarks/applications/configs/weight_decay_mlp.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    OUT,
    BatchStream,
    accuracy,
    command_line,
    load_dataset,
    make_model,
    param_norms,
    save_rows,
    to_tensor,
)  # noqa: E402

from taskgrad.datasets.images import ImageDataset, stratified_subset  # noqa: E402
from taskgrad.regularize import CoefficientFreeDecay  # noqa: E402


def variants(config: dict[str, Any]) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    for m in config["methods"]:
        if m == "adamw":
            out.extend(("adamw", float(wd)) for wd in config["adamw_grid"])
        else:
            out.append((m, None))
    return out


def make_optimizer(method: str, wd: float | None, model: torch.nn.Module, lr: float):
    if method == "none":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if method in ("cf_l2", "cf_l1"):
        return CoefficientFreeDecay(torch.optim.Adam(model.parameters(), lr=lr), norm=method[3:])
    raise ValueError(f"unknown method {method!r}")


def run_one(
    data: dict[str, torch.Tensor],
    model_name: str,
    method: str,
    wd: float | None,
    seed: int,
    steps: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = make_model(model_name)
    opt = make_optimizer(method, wd, model, config["lr"])
    stream = BatchStream(data["x"], data["y"], config["batch_size"], seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = stream.next()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    l2, l1 = param_norms(model)
    return {
        "model": model_name,
        "method": method,
        "weight_decay": wd,
        "seed": seed,
        "steps": steps,
        "train_loss_last": float(loss.detach()),
        "train_acc": accuracy(model, data["x"], data["y"]),
        "val_acc": accuracy(model, data["xv"], data["yv"]),
        "test_acc": accuracy(model, data["xt"], data["yt"]),
        "norm_l2": l2,
        "norm_l1": l1,
        "active_frac": (opt.n_active / max(opt.n_steps, 1))
        if isinstance(opt, CoefficientFreeDecay)
        else None,
        "seconds": secs,
    }


def run(
    config: dict[str, Any],
    dataset: ImageDataset | None = None,
    smoke: bool = False,
    out_dir: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the grid of the config; ``smoke`` = one step per run on the given (tiny) data."""
    torch.set_num_threads(config.get("threads", 1))
    ds = dataset if dataset is not None else load_dataset(config["dataset"])
    xt, yt = to_tensor(ds.test_x), torch.from_numpy(ds.test_y)
    rows: list[dict[str, Any]] = []
    jobs = [
        (n, model_name, seed, m, wd)
        for n in config["n_train"]
        for model_name in config["models"]
        for seed in config["seeds"]
        for m, wd in variants(config)
    ]
    if smoke:
        jobs = jobs[:: max(1, len(jobs) // 6)] + [j for j in jobs if j[3] != "adamw"][:4]
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task("weight decay", total=len(jobs))
        for n, model_name, seed, m, wd in jobs:
            rng = np.random.default_rng(1000 + seed)
            n_eff = min(n, ds.train_y.shape[0] // 2) if smoke else n
            idx = stratified_subset(ds.train_y, n_eff, rng)
            n_val = min(config["n_val"], ds.train_y.shape[0] - n_eff) if smoke else config["n_val"]
            vidx = stratified_subset(ds.train_y, n_val, rng, exclude=idx)
            data = {
                "x": to_tensor(ds.train_x[idx]),
                "y": torch.from_numpy(ds.train_y[idx]),
                "xv": to_tensor(ds.train_x[vidx]),
                "yv": torch.from_numpy(ds.train_y[vidx]),
                "xt": xt,
                "yt": yt,
            }
            steps = 1 if smoke else int(config["steps"][str(n)])
            row = run_one(data, model_name, m, wd, seed, steps, config)
            row["n_train"] = n
            rows.append(row)
            bar.advance(task)
            if not smoke:  # keep partial results if the run is cut short
                save_rows(rows, config.get("name", "weight_decay") + "_partial", out_dir or OUT)
    if not smoke:
        out_dir = out_dir or OUT
        stem = config.get("name", "weight_decay")
        save_rows(rows, stem, out_dir)
        summarize(rows, config, out_dir / f"{stem}_summary.md")
        plot(rows, out_dir / f"{stem}.png")
    return rows


def summarize(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> str:
    """Markdown table: mean ± std over seeds; AdamW best by validation and the grid spread."""
    lines = [
        "| model | n_train | method | test acc (mean ± std) | ‖θ‖₂ | ‖θ‖₁ | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for model_name in config["models"]:
        for n in config["n_train"]:
            sub = [r for r in rows if r["n_train"] == n and r["model"] == model_name]

            def stats(rs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
                a = np.array([r["test_acc"] for r in rs])
                return (
                    a.mean(),
                    a.std(),
                    np.mean([r["norm_l2"] for r in rs]),
                    np.mean([r["norm_l1"] for r in rs]),
                )

            for m in config["methods"]:
                if m == "adamw":
                    grid = sorted({r["weight_decay"] for r in sub if r["method"] == "adamw"})
                    by_wd = {
                        wd: [r for r in sub if r["method"] == "adamw" and r["weight_decay"] == wd]
                        for wd in grid
                    }
                    val = {wd: np.mean([r["val_acc"] for r in rs]) for wd, rs in by_wd.items()}
                    best = max(grid, key=lambda wd: val[wd])
                    mu, sd, n2, n1 = stats(by_wd[best])
                    tests = {wd: np.mean([r["test_acc"] for r in rs]) for wd, rs in by_wd.items()}
                    spread = ", ".join(f"{wd:g}: {100 * t:.2f}" for wd, t in tests.items())
                    lines.append(
                        f"| {model_name} | {n} | AdamW best (wd={best:g}, by val) | {100 * mu:.2f} "
                        f"± {100 * sd:.2f} | "
                        f"{n2:.1f} | {n1:.0f} | grid test acc: {spread} |"
                    )
                else:
                    rs = [r for r in sub if r["method"] == m]
                    mu, sd, n2, n1 = stats(rs)
                    act = rs[0].get("active_frac")
                    note = (
                        "constraint active on "
                        f"{100 * np.mean([r['active_frac'] for r in rs]):.0f}% of steps"
                        if act is not None
                        else ""
                    )
                    lines.append(
                        f"| {model_name} | {n} | {m} | {100 * mu:.2f} ± {100 * sd:.2f} | {n2:.1f} "
                        f"| {n1:.0f} | {note} |"
                    )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["model"], r["n_train"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, (model_name, n) in zip(axes[0], keys, strict=False):
        sub = [r for r in rows if r["model"] == model_name and r["n_train"] == n]
        labels = sorted({(r["method"], r["weight_decay"] or 0.0) for r in sub})
        for method, wd in labels:
            rs = [r for r in sub if r["method"] == method and (r["weight_decay"] or 0.0) == wd]
            name = f"adamw {wd:g}" if method == "adamw" else method
            ax.scatter([r["norm_l2"] for r in rs], [r["test_acc"] for r in rs], label=name, s=20)
        ax.set_xscale("log")
        ax.set_xlabel("final ‖θ‖₂")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{model_name}, n_train={n}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    command_line(
        __doc__,
        Path(__file__).parent / "configs" / "weight_decay_mlp.json",
        run,
        summarize,
        "weight_decay",
    )


if __name__ == "__main__":
    main()
