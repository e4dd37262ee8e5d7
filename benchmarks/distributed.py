"""Traffic and time per step of taskgrad under DDP: 2 CPU ranks (gloo), against the summed loss.

Model: an MLP encoder (in → width → width, tanh) with k linear heads, per-rank batch b.
Per configuration, every rank runs ``warmup`` + ``steps`` SGD steps; we report the median step
time on rank 0 (max over ranks per step), the numbers taskgrad all-reduces per step (besides
DDP's own gradient all-reduce of P numbers) with their bytes and the number of taskgrad
all-reduces per step, and the ratio to the plain DDP summed-loss step.

    .venv/bin/python benchmarks/distributed.py            # full table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/distributed.py --quick    # smoke run

Writes benchmarks/out/distributed.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

OUT = Path(__file__).resolve().parent / "out"


class Net(nn.Module):
    def __init__(self, d_in: int, width: int, k: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(k))

    def forward(self, x):
        z = self.encoder(x)
        return torch.cat([h(z) for h in self.heads], dim=1), z


def _losses(pred, y):
    return [((pred[:, i] - y[:, i]) ** 2).mean() for i in range(pred.shape[1])]


def _run_config(rank: int, cfg: dict, warmup: int, steps: int) -> dict:
    import taskgrad
    from taskgrad.distributed import DistributedStep, FeatureHook, Traffic
    from taskgrad.sources import FullGram, ModuleLoss, RepresentationGram, SketchGram

    torch.manual_seed(0)
    k, width, d_in, b = cfg["k"], cfg["width"], cfg["d_in"], cfg["batch"]
    cuda = cfg.get("device", "cpu") == "cuda"  # one GPU per rank (NCCL)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    base = Net(d_in, width, k).to(device)
    ddp = nn.parallel.DistributedDataParallel(base, device_ids=[rank] if cuda else None)
    hook = FeatureHook(base.encoder)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    traffic = Traffic()
    src = cfg["source"]
    step = None
    if src != "sum":
        source = {
            "representation": RepresentationGram(),
            "full": FullGram(list(base.encoder.parameters())),
            "sketch": SketchGram(r=cfg.get("r", 16), seed=0),
        }[src]
        step = DistributedStep(taskgrad.MGDA(), source, traffic=traffic)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(b, d_in, generator=g).to(device)
    y = torch.randn(b, k, generator=g).to(device)
    times = []
    for t in range(warmup + steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred, _ = ddp(x)
        losses = _losses(pred, y)
        if step is None:
            torch.stack(losses).sum().backward()
        else:
            kw = (
                {"loss_fn": ModuleLoss(base, lambda o: _losses(o[0], y), x)}
                if src == "sketch"
                else {}
            )
            step.backward(losses, features=hook.value, **kw)
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if t >= warmup:
            times.append(float(dt))
        if t == warmup - 1:
            traffic.reset()
    P = sum(p.numel() for p in base.parameters())
    return {
        "median_s": statistics.median(times),
        "taskgrad_numel_per_step": traffic.numel / steps,
        "taskgrad_bytes_per_step": traffic.bytes / steps,
        "taskgrad_calls_per_step": traffic.calls / steps,
        "P": P,
        "ddp_grad_numel": P,
    }


def worker(
    rank: int, world_size: int, configs: list[dict], warmup: int, steps: int, out_path: str
) -> None:
    rows = []
    for i, cfg in enumerate(configs):
        res = _run_config(rank, cfg, warmup, steps)
        rows.append({**cfg, **res})
        if rank == 0:
            print(
                f"[{i + 1}/{len(configs)}] {cfg} -> {res['median_s'] * 1e3:.2f} ms, "
                f"{res['taskgrad_numel_per_step']:.0f} numbers",
                flush=True,
            )
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu: 2 gloo ranks; cuda: one NCCL rank per GPU, batch 256 per rank",
    )
    args = ap.parse_args()
    from taskgrad.distributed import run_on_ranks

    OUT.mkdir(parents=True, exist_ok=True)
    ks = [2, 8] if not args.quick else [2]
    widths = [256] if args.quick else [64, 512]
    configs = []
    for width in widths:
        for k in ks:
            for source in ("sum", "representation", "sketch", "full"):
                configs.append(
                    {
                        "k": k,
                        "width": width,
                        "d_in": 64,
                        "batch": 256 if args.device == "cuda" else 64,
                        "source": source,
                        "r": 16,
                        "device": args.device,
                    }
                )
    steps = 3 if args.quick else args.steps
    path = OUT / "distributed.json"
    t0 = time.time()
    world = torch.cuda.device_count() if args.device == "cuda" else 2
    run_on_ranks(
        worker,
        world,
        args=(configs, 2, steps, str(path)),
        timeout=590,
        threads=1,
        backend="nccl" if args.device == "cuda" else "gloo",
    )
    rows = json.loads(path.read_text())
    base = {(r["k"], r["width"]): r["median_s"] for r in rows if r["source"] == "sum"}
    for r in rows:
        r["ratio_to_sum"] = r["median_s"] / base[(r["k"], r["width"])]
    path.write_text(json.dumps(rows, indent=1))
    with open(OUT / "distributed.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        f"\n{world} ranks, {'NCCL, GPU' if args.device == 'cuda' else 'gloo, CPU'} "
        f"({time.time() - t0:.0f} s)"
    )
    print(
        f"{'width':>5} {'k':>3} {'P':>8} {'source':>15} {'ms/step':>8} {'× sum':>6} "
        f"{'taskgrad floats':>15} "
        f"{'bytes':>9} {'calls':>5} {'DDP floats':>10}"
    )
    for r in rows:
        print(
            f"{r['width']:>5} {r['k']:>3} {r['P']:>8} {r['source']:>15} "
            f"{r['median_s'] * 1e3:>8.2f} "
            f"{r['ratio_to_sum']:>6.2f} {r['taskgrad_numel_per_step']:>15.0f} "
            f"{r['taskgrad_bytes_per_step']:>9.0f} "
            f"{r['taskgrad_calls_per_step']:>5.0f} {r['ddp_grad_numel']:>10}"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [f"w{r['width']} k{r['k']}\n{r['source']}" for r in rows]
        ax.bar(range(len(rows)), [r["ratio_to_sum"] for r in rows])
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("time / summed-loss DDP step")
        fig.tight_layout()
        fig.savefig(OUT / "distributed.png", dpi=120)
    except Exception as e:  # plotting is a convenience
        print("plot skipped:", e)


if __name__ == "__main__":
    main()
