"""Noisy labels with 1,000 clean examples: PrimaryAux (clean loss as constraint) vs baselines.

Data: a noisy training set (n_noisy images from the training split, stratified, or "rest": every
training image outside the clean set; labels corrupted) and a disjoint clean set (n_clean images,
true labels); the full 10k test split for accuracy.
Methods, all with the same optimizer and the same number of steps T on the noisy stream:
  noisy        noisy loss only
  clean        clean loss only (T steps on the clean set)
  sum          noisy + clean loss
  finetune     T noisy steps, then ``finetune_frac``·T clean steps (the only one with more steps)
  glmask       Gradient-guided Loss Masking (arXiv 2102.13549)
  primary_aux  noisy loss primary, the clean batch a constraint (taskgrad.PrimaryAux)
  primary_aux_m  same with ``n_clean_batches`` clean batches as that many constraints

Usage:
  .venv/bin/python benchmarks/applications/noisy_labels.py --config
  benchmarks/applications/configs/noisy_labels.json
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
    save_rows,
    to_tensor,
)  # noqa: E402

from taskgrad.datasets.images import ImageDataset, stratified_subset  # noqa: E402
from taskgrad.noisy import CleanSetTrainer, corrupt_labels  # noqa: E402


def run_one(
    method: str, data: dict[str, torch.Tensor], seed: int, steps: int, config: dict[str, Any]
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = make_model(config["model"])
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    strategy = {"finetune": "noisy", "primary_aux_m": "primary_aux"}.get(method, method)
    trainer = CleanSetTrainer(model, opt, strategy)
    noisy = BatchStream(data["x"], data["y"], config["batch_size"], seed)
    clean = BatchStream(data["xc"], data["yc"], config["clean_batch_size"], seed + 7)
    m = config["n_clean_batches"] if method == "primary_aux_m" else 1
    kept, lam = [], []
    t0 = time.perf_counter()
    for _ in range(steps):
        res = trainer.step(noisy.next(), [clean.next() for _ in range(m)])
        if res.kept_fraction is not None:
            kept.append(res.kept_fraction)
        if res.weights is not None:
            lam.append(float((res.weights[1:] > 0).any()))
    acc_before_ft = None
    if method == "finetune":
        acc_before_ft = accuracy(model, data["xt"], data["yt"])
        trainer.strategy = "clean"
        for _ in range(int(config["finetune_frac"] * steps) if steps > 1 else 1):
            trainer.step(noisy.next(), [clean.next()])
    return {
        "method": method,
        "seed": seed,
        "steps": steps,
        "test_acc": accuracy(model, data["xt"], data["yt"]),
        "clean_acc": accuracy(model, data["xc"], data["yc"]),
        "noisy_train_acc": accuracy(model, data["x"], data["y"]),
        "test_acc_before_finetune": acc_before_ft,
        "glmask_kept": float(np.mean(kept)) if kept else None,
        "constraint_active_frac": float(np.mean(lam)) if lam else None,
        "seconds": time.perf_counter() - t0,
    }


def run(
    config: dict[str, Any],
    datasets: dict[str, ImageDataset] | None = None,
    smoke: bool = False,
    out_dir: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the config; ``smoke`` = one step per method on the given (tiny) data sets."""
    torch.set_num_threads(config.get("threads", 1))
    rows: list[dict[str, Any]] = []
    settings = [
        (d, kind, rate, seed)
        for d in config["datasets"]
        for kind, rate in config["noise"]
        for seed in config["seeds"]
    ]
    if smoke:
        settings = settings[:2]
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task("noisy labels", total=len(settings) * len(config["methods"]))
        cache: dict[str, ImageDataset] = dict(datasets or {})
        for dname, kind, rate, seed in settings:
            if dname not in cache:
                cache[dname] = load_dataset(dname)
            ds = cache[dname]
            rng = np.random.default_rng(2000 + seed)
            n_clean = (
                min(config["n_clean"], ds.train_y.shape[0] // 4) if smoke else config["n_clean"]
            )
            cidx = stratified_subset(ds.train_y, n_clean, rng)
            if config["n_noisy"] == "rest":  # every training image outside the clean set
                nidx = rng.permutation(np.setdiff1d(np.arange(ds.train_y.shape[0]), cidx))
            else:
                n_noisy = (
                    min(config["n_noisy"], ds.train_y.shape[0] // 2) if smoke else config["n_noisy"]
                )
                nidx = stratified_subset(ds.train_y, n_noisy, rng, exclude=cidx)
            n_noisy = nidx.shape[0]
            ynoisy, flipped = corrupt_labels(ds.train_y[nidx], kind, rate, 10, rng)
            data = {
                "x": to_tensor(ds.train_x[nidx]),
                "y": torch.from_numpy(ynoisy),
                "xc": to_tensor(ds.train_x[cidx]),
                "yc": torch.from_numpy(ds.train_y[cidx]),
                "xt": to_tensor(ds.test_x),
                "yt": torch.from_numpy(ds.test_y),
            }
            steps = 1 if smoke else int(config["epochs"] * n_noisy // config["batch_size"])
            for method in config["methods"]:
                row = run_one(method, data, seed, steps, config)
                row.update(
                    dataset=dname, noise=kind, rate=rate, realized_rate=float(flipped.mean())
                )
                rows.append(row)
                bar.advance(task)
            if not smoke:  # keep partial results if the run is cut short
                save_rows(rows, config.get("name", "noisy_labels") + "_partial", out_dir or OUT)
    if not smoke:
        out_dir = out_dir or OUT
        stem = config.get("name", "noisy_labels")
        save_rows(rows, stem, out_dir)
        summarize(rows, config, out_dir / f"{stem}_summary.md")
        plot(rows, config, out_dir / f"{stem}.png")
    return rows


def summarize(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> str:
    methods = config["methods"]
    lines = [
        "| data set | noise | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for d in config["datasets"]:
        for kind, rate in config["noise"]:
            cells = []
            means = {}
            for m in methods:
                a = np.array(
                    [
                        r["test_acc"]
                        for r in rows
                        if r["dataset"] == d
                        and r["noise"] == kind
                        and r["rate"] == rate
                        and r["method"] == m
                    ]
                )
                means[m] = a.mean()
                cells.append(f"{100 * a.mean():.2f} ± {100 * a.std():.2f}")
            best = max(means, key=means.get)
            cells = [f"**{c}**" if m == best else c for m, c in zip(methods, cells, strict=True)]
            lines.append(f"| {d} | {kind} {int(100 * rate)}% | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = config["methods"]
    fig, axes = plt.subplots(
        1, len(config["datasets"]), figsize=(7 * len(config["datasets"]), 4), squeeze=False
    )
    for ax, d in zip(axes[0], config["datasets"], strict=False):
        settings = config["noise"]
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            mu, sd = [], []
            for kind, rate in settings:
                a = np.array(
                    [
                        r["test_acc"]
                        for r in rows
                        if r["dataset"] == d
                        and r["noise"] == kind
                        and r["rate"] == rate
                        and r["method"] == m
                    ]
                )
                mu.append(a.mean())
                sd.append(a.std())
            ax.bar(np.arange(len(settings)) + j * width, mu, width, yerr=sd, label=m)
        ax.set_xticks(np.arange(len(settings)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{k} {int(100 * r)}%" for k, r in settings])
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.4, 1.0)
        ax.set_title(d)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    command_line(
        __doc__,
        Path(__file__).parent / "configs" / "noisy_labels.json",
        run,
        summarize,
        "noisy_labels",
    )


if __name__ == "__main__":
    main()
