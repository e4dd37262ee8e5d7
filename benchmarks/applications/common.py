"""Shared pieces of the application experiments: data, models, batching, evaluation, output."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from taskgrad.datasets.images import ImageDataset, load_fashion_mnist, load_mnist

OUT = Path(__file__).resolve().parents[1] / "out" / "applications"


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def load_dataset(name: str) -> ImageDataset:
    """The real data set by name (only the experiment scripts call this, never the tests)."""
    if name == "fashion_mnist":
        return load_fashion_mnist()
    if name == "mnist":
        return load_mnist()
    raise ValueError(f"unknown data set {name!r}: use 'fashion_mnist' or 'mnist'.")


def fake_dataset(n_train: int = 600, n_test: int = 100, seed: int = 0) -> ImageDataset:
    """Tiny random uint8 images with 10 balanced classes (for the one-batch tests)."""
    rng = np.random.default_rng(seed)
    ytr = np.arange(n_train) % 10
    yte = np.arange(n_test) % 10
    xtr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    xte = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    return ImageDataset(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64))


def to_tensor(x: np.ndarray) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return (
        torch.from_numpy(np.ascontiguousarray(x)).float().div(255.0).sub(0.5).div(0.5)
    ).unsqueeze(1)


def make_model(name: str, num_classes: int = 10, hidden: int = 256) -> nn.Module:
    """``mlp``: 784-256-256-C ReLU. ``cnn``: conv5(16)-pool-conv5(32)-pool-linear (LeNet-like)."""
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(512, num_classes),
        )
    raise ValueError(f"unknown model {name!r}: use 'mlp' or 'cnn'.")


class BatchStream:
    """Endless shuffled mini-batches (reshuffled every epoch) from (x, y) with a seeded generator;
    x is anything indexed by a tensor of example indices (a tensor, a molecule set)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.bs = x, y, min(batch_size, y.shape[0])
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(y.shape[0], generator=self.gen)
        self.pos = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.pos + self.bs > self.y.shape[0]:
            self.perm = torch.randperm(self.y.shape[0], generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return self.x[idx], self.y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 2500) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    model.train()
    return correct / x.shape[0]


@torch.no_grad()
def param_norms(model: nn.Module) -> tuple[float, float]:
    """(‖θ‖₂, ‖θ‖₁) over all parameters."""
    l2 = sum(float((p.double() ** 2).sum()) for p in model.parameters()) ** 0.5
    l1 = sum(float(p.double().abs().sum()) for p in model.parameters())
    return l2, l1


def save_rows(rows: list[dict[str, Any]], stem: str, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    with open(jpath, "w") as f:
        json.dump(rows, f, indent=1)
    if rows:
        keys = sorted({k for r in rows for k in r})
        with open(cpath, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return jpath, cpath


def command_line(
    doc: str, default_config: Path, run: Any, summarize: Any, default_name: str
) -> None:
    """``--config PATH``: load it, ``rows = run(config)``, print ``summarize(rows, config,
    md_path)``.
    """
    import argparse
    import time

    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=str(default_config))
    args = ap.parse_args()
    config = load_config(args.config)
    t = time.perf_counter()
    rows = run(config)
    print(summarize(rows, config, OUT / f"{config.get('name', default_name)}_summary.md"))
    print(f"total {time.perf_counter() - t:.0f} s")
