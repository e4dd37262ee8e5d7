"""The multi-task architectures of taskgrad.models with any method, in a plain training loop.

A LibMTL user picks an architecture and a weighting; here that is ``--arch`` and ``--method``.
Every model returns a ``MultiTaskOutput``: ``out.preds`` (one prediction per task) and
``out.features``, the tensor(s) every task's loss depends on, so one call replaces the backward:

    out = model(x)
    losses = [loss_fn(out[t], y[t]) for t in tasks]
    taskgrad.backward(losses, method=taskgrad.methods.get("mgda"), features=out.features)
    opt.step()

``--source full`` takes the Gram of the shared parameters' gradients instead (exact, costlier).
Data: three generated regression tasks on 16 features that share some structure (no download).

    .venv/bin/python examples/architectures.py --arch mmoe --method famo --steps 300
    .venv/bin/python examples/architectures.py --arch all --method mgda       # every architecture
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

import taskgrad
from taskgrad.models import CGC, MTAN, PLE, CrossStitch, DSelectK, HardParameterSharing, MMoE, mlp

TASKS = ["sum", "product", "norm"]
D_IN, WIDTH = 16, 32


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I); tasks: a linear sum, a pairwise product and a norm, sharing features 0..7."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    y = torch.stack(
        [x[:, :8].sum(1) / 3, x[:, 0] * x[:, 1] + x[:, 2] * x[:, 3], x[:, 4:12].norm(dim=1) - 2.8],
        1,
    )
    return x, y + 0.05 * torch.randn(y.shape, generator=g)


def build(arch: str) -> nn.Module:
    """The architecture ``arch`` on flat inputs, each head a Linear to one output."""
    heads = {t: nn.Linear(WIDTH, 1) for t in TASKS}
    layers = [
        nn.Sequential(nn.Linear(D_IN, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, WIDTH), nn.ReLU()),
    ]
    if arch == "shared":
        return HardParameterSharing(nn.Sequential(*layers), heads)
    if arch == "cross_stitch":
        return CrossStitch(layers, heads)
    if arch == "mtan":
        return MTAN(layers, [64, WIDTH], heads, image=False)
    if arch == "mmoe":
        return MMoE(lambda: mlp([D_IN, 64, WIDTH]), 4, D_IN, heads)
    if arch == "cgc":
        return CGC(
            D_IN, WIDTH, heads, n_shared=2, n_specific=1, make_expert=lambda a, b: mlp([a, 64, b])
        )
    if arch == "ple":
        return PLE([D_IN, 64, WIDTH], heads, n_shared=2, n_specific=1)
    if arch == "dselect_k":
        return DSelectK(lambda: mlp([D_IN, 64, WIDTH]), 4, 2, heads, per_example=True, gate_in=D_IN)
    raise SystemExit(f"--arch must be one of {', '.join(ARCHS)} or all, got {arch!r}.")


ARCHS = ["shared", "cross_stitch", "mtan", "mmoe", "cgc", "ple", "dselect_k"]


def task_losses(out: taskgrad.models.MultiTaskOutput, y: torch.Tensor) -> list[torch.Tensor]:
    return [nn.functional.mse_loss(out[t].squeeze(-1), y[:, i]) for i, t in enumerate(TASKS)]


def train(arch: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(args.seed)
    model = build(arch)
    method = taskgrad.methods.get(args.method)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = make_data(args.n_train, args.seed)
    x_te, y_te = make_data(1000, args.seed + 1)
    start = time.perf_counter()
    skipped = 0
    for step in range(args.steps):
        idx = torch.randint(
            0, args.n_train, (args.batch,), generator=torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        out = model(x[idx])
        res = taskgrad.backward(
            task_losses(out, y[idx]),
            method=method,
            features=out.features if args.source == "representation" else None,
        )
        skipped += int(res.skipped)
        opt.step()
    with torch.no_grad():
        test = [float(v) for v in task_losses(model(x_te), y_te)]
    return {
        "seconds": time.perf_counter() - start,
        "skipped": skipped,
        **dict(zip(TASKS, test, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", default="all", help=f"one of {', '.join(ARCHS)}, or all (default)")
    ap.add_argument(
        "--method", default="mgda", help="a name from `taskgrad methods` (default mgda)"
    )
    ap.add_argument(
        "--source",
        choices=["representation", "full"],
        default="representation",
        help="where the Gram is taken (default: each model's features)",
    )
    ap.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per architecture (default 300)"
    )
    ap.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    ap.add_argument("--n-train", type=int, default=4000, help="training examples (default 4000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", default=None, help="also write the test losses to OUT/architectures.json"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="20 steps (also TASKGRAD_EXAMPLE_SMOKE=1), as the tests run it",
    )
    args = ap.parse_args()
    if args.smoke or os.environ.get("TASKGRAD_EXAMPLE_SMOKE") == "1":
        args.steps, args.n_train = 20, 512
    archs = ARCHS if args.arch == "all" else [args.arch]
    results = {}
    print(
        f"method {args.method}, Gram from the {args.source} source, {args.steps} steps; test MSE "
        "per task:"
    )
    for arch in archs:
        r = train(arch, args)
        results[arch] = r
        cells = "  ".join(f"{t} {r[t]:.4f}" for t in TASKS)
        print(f"  {arch:<13} {cells}   ({r['seconds']:.1f} s, {r['skipped']} skipped)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "architectures.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
