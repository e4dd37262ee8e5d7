"""Cost of one multi-task step vs the plain summed loss: ResNet-18-style encoder + k linear heads.

For each k: time per step (median of --reps after --warmup) and peak memory of
  sum            plain Σ Lᵢ backward (baseline)
  full           taskgrad FullGram (blockwise Σ_p J_p J_pᵀ during one batched backward) + MGDA
  representation taskgrad RepresentationGram at the encoder output + MGDA
  sketch8/32     taskgrad SketchGram (r forward-mode JVPs) + MGDA
  periodic10     FullGram + MGDA, weights recomputed every 10 steps (amortized time)
  loop           per-task backward loop storing k gradients, then MGDA (the LibMTL way)
  autojac        torchjd 0.18 autojac.backward with UPGrad (stored Jacobian)
  autogram       torchjd 0.18 autogram.Engine (Gramian) + UPGrad weighting
Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU the peak of tracemalloc is useless
for torch, so the process RSS high-water mark is sampled by a thread (psutil), minus the RSS before
the step. Ratios are to the summed loss in the same run.

Each (k, method) runs in its own process so that the RSS high-water mark is its own.

  python benchmarks/step_cost.py --device cpu --batch 32 --width 16 --ks 2 4 10 40
  python benchmarks/step_cost.py --device cuda            # batch 256, width 64

MLP configuration (``--config mlp``): encoder 256→512→512→512 (ReLU), k linear heads, batch 256,
MSE losses, MGDA weights, one thread. Time: every method once per round, ``--rounds`` interleaved
rounds in ONE process after ``--warmup`` rounds; the ratio to the summed step is taken per round
and the median reported, for the wall clock and for the process CPU time (with one thread, the
latter is what a step costs on an unshared core; a shared machine stretches only the former).
Peers: the plain per-loss VJP loop at z (``loop-z``), the per-task
``autograd.grad`` loop with a stored Jacobian (``loop``), TorchJD 0.18 autojac (``mtl_backward`` +
``jac_to_grad``) and autogram (``Engine`` Gramian). Peak memory of the full-parameter source and
the stored-Jacobian loop: each in its own process (RSS high-water mark above the pre-step RSS).

  python benchmarks/step_cost.py --config mlp --ks 2 10 40 100 --rounds 15
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import taskgrad
from taskgrad.models import MultiHead, resnet18_encoder
from taskgrad.sources import FullGram, ModuleLoss, RepresentationGram, SketchGram
from taskgrad.training import GradStep

OUT = Path(__file__).parent / "out"


class RSSPeak:
    """Sample the process RSS every 2 ms in a thread; .peak is the high-water mark in bytes."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> RSSPeak:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def losses_of(out, y):
    z, heads = out
    return [F.cross_entropy(h, y[:, i]) for i, h in enumerate(heads)]


def make_step(name: str, model, k: int):
    mgda = taskgrad.MGDA()
    if name == "sum":

        def run(x, y):
            out = model(x)
            torch.stack(losses_of(out, y)).sum().backward()

        return run
    if name in ("full", "representation", "sketch8", "sketch32", "periodic10"):
        source = {
            "full": FullGram(),
            "representation": RepresentationGram(),
            "sketch8": SketchGram(8, chunk=8),
            "sketch32": SketchGram(32, chunk=8),
            "periodic10": FullGram(),
        }[name]
        gs = GradStep(mgda, source, period=10 if name == "periodic10" else 1)

        def run(x, y):
            out = model(x)
            L = losses_of(out, y)
            kw = {"features": out[0]} if name == "representation" else {}
            if name.startswith("sketch"):
                kw["loss_fn"] = ModuleLoss(model, lambda o: losses_of(o, y), x)
            gs.backward(L, **kw)

        return run
    if name == "loop":
        shared = list(model.encoder.parameters())

        def run(x, y):
            out = model(x)
            L = losses_of(out, y)
            grads = []
            for i in range(k):  # LibMTL-style: one backward per task, flattened shared gradient
                g = torch.autograd.grad(L[i], shared, retain_graph=True)
                grads.append(torch.cat([t.reshape(-1) for t in g]))
            J = torch.stack(grads)
            w = mgda(gram=J @ J.T)
            torch.stack(L).mul(w).sum().backward()

        return run
    if name in ("autojac", "autogram"):
        from torchjd.aggregation import MGDA as JdMGDA
        from torchjd.aggregation import MGDAWeighting

        if name == "autojac":
            from torchjd.autojac import jac_to_grad, mtl_backward

            agg = JdMGDA()
            shared = list(model.encoder.parameters())

            def run(x, y):
                out = model(x)
                mtl_backward(losses_of(out, y), features=out[0])
                jac_to_grad(shared, agg)

            return run
        from torchjd.autogram import Engine

        engine = Engine(model.encoder, batch_dim=None)
        wt = MGDAWeighting()

        def run(x, y):
            out = model(x)
            L = torch.stack(losses_of(out, y))
            w = wt(engine.compute_gramian(L))
            L.backward(w)

        return run
    raise ValueError(name)


def measure(run, model, x, y, device, warmup: int, reps: int) -> tuple[float, float]:
    """Median time of ``reps`` steps after ``warmup``; peak memory over all of them (bytes above
    the allocation/RSS before the first step)."""
    import resource

    import psutil

    times: list[float] = []
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = psutil.Process().memory_info().rss
    hwm_reset = False
    for i in range(warmup + reps):
        if i == warmup and device.type != "cuda":  # reset the RSS high-water mark after warm-up
            gc.collect()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                hwm_reset = True
                base = psutil.Process().memory_info().rss
            except OSError:
                pass
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        run(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    elif hwm_reset:  # VmHWM: the RSS high-water mark since the reset (Linux)
        status = Path("/proc/self/status").read_text()
        hwm = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:"))
        peak = hwm * 1024 - base
    else:  # ru_maxrss: the process high-water mark in KiB, warm-up included
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return statistics.median(times), float(peak)


def one(args, k: int, name: str) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    enc = resnet18_encoder(width=args.width)
    model = MultiHead(enc, enc.feature_dim, k, 10).to(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch, k), device=device)
    reps = args.reps if name != "periodic10" else max(args.reps, 10)
    try:
        run = make_step(name, model, k)
        t, mem = measure(run, model, x, y, device, args.warmup, reps)
        err = None
    except Exception as e:  # report, keep going
        t, mem, err = float("nan"), float("nan"), f"{type(e).__name__}: {str(e)[:200]}"
    return {"k": k, "method": name, "time_s": t, "peak_bytes": mem, "error": err}


# ---------------------------------------------------------------------------- MLP configuration
MLP_METHODS = ["sum", "representation", "full", "loop-z", "loop", "autojac", "autogram"]


class MLP(torch.nn.Module):
    """Encoder 256→512→512→512 (ReLU) and k linear heads; forward returns (z, [k outputs])."""

    def __init__(self, k: int) -> None:
        super().__init__()
        nn = torch.nn
        self.encoder = nn.Sequential(
            nn.Linear(256, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(k))

    def forward(self, x):
        z = self.encoder(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


def mlp_losses(out, y):
    return [F.mse_loss(o, y[:, i]) for i, o in enumerate(out[1])]


def make_mlp_step(name: str, model: MLP, k: int):
    mgda = taskgrad.MGDA()
    shared = list(model.encoder.parameters())
    if name == "sum":

        def run(x, y):
            sum(mlp_losses(model(x), y)).backward()

        return run
    if name in ("representation", "full"):
        gs = GradStep(mgda, RepresentationGram() if name == "representation" else FullGram())

        def run(x, y):
            out = model(x)
            gs.backward(mlp_losses(out, y), features=out[0] if name == "representation" else None)

        return run
    if name == "loop-z":

        def run(x, y):
            out = model(x)
            L = mlp_losses(out, y)
            J = torch.stack(
                [torch.autograd.grad(li, out[0], retain_graph=True)[0].reshape(-1) for li in L]
            )
            w = mgda(gram=J @ J.T)
            sum(wi * li for wi, li in zip(w, L, strict=True)).backward()

        return run
    if name == "loop":

        def run(x, y):
            out = model(x)
            L = mlp_losses(out, y)
            J = torch.stack(
                [
                    torch.cat(
                        [g.reshape(-1) for g in torch.autograd.grad(li, shared, retain_graph=True)]
                    )
                    for li in L
                ]
            )
            w = mgda(gram=J @ J.T)
            sum(wi * li for wi, li in zip(w, L, strict=True)).backward()

        return run
    if name == "autojac":
        from torchjd.aggregation import MGDA as JdMGDA
        from torchjd.autojac import jac_to_grad, mtl_backward

        agg = JdMGDA()

        def run(x, y):
            out = model(x)
            mtl_backward(mlp_losses(out, y), features=out[0])
            jac_to_grad(shared, agg)

        return run
    if name == "autogram":
        from torchjd.aggregation import MGDAWeighting
        from torchjd.autogram import Engine

        engine = Engine(model.encoder, batch_dim=None)
        wt = MGDAWeighting()

        def run(x, y):
            out = model(x)
            L = torch.stack(mlp_losses(out, y))
            L.backward(wt(engine.compute_gramian(L)))

        return run
    raise ValueError(name)


def mlp_data(k: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(256, 256, generator=g), torch.randn(256, k, generator=g)


def mlp_times(k: int, methods: list[str], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds in this process: median time and median per-round ratio to "sum"."""
    torch.manual_seed(0)
    import copy

    base = MLP(k)
    x, y = mlp_data(k)
    models = {
        m: copy.deepcopy(base) for m in methods
    }  # autogram's engine hooks its own copy's modules
    runs = {m: make_mlp_step(m, models[m], k) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    # process CPU time: what contention does not stretch
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(warmup + rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            models[m].zero_grad(set_to_none=True)
            c0, t0 = time.process_time(), time.perf_counter()
            runs[m](x, y)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                times[m].append(dt)
                cpu[m].append(dc)
    out = {}
    for m in methods:
        ratios = [a / b for a, b in zip(times[m], times["sum"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu[m], cpu["sum"], strict=True)]
        out[m] = {
            "time_s": statistics.median(times[m]),
            "ratio": statistics.median(ratios),
            "cpu_s": statistics.median(cpu[m]),
            "cpu_ratio": statistics.median(cpu_ratios),
        }
    return out


def mlp_peak(k: int, name: str, reps: int) -> float:
    torch.manual_seed(0)
    model = MLP(k)
    x, y = mlp_data(k)
    _, peak = measure(make_mlp_step(name, model, k), model, x, y, torch.device("cpu"), 1, reps)
    return peak


def mlp_main(args) -> None:
    import subprocess
    import sys

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods if m in MLP_METHODS] if args.methods_given else MLP_METHODS
    if "sum" not in methods:
        methods = ["sum", *methods]
    rows = []
    for k in args.ks:
        t = mlp_times(k, methods, args.rounds, args.warmup)
        mem = {}
        for name in ("full", "loop"):
            cmd = [
                sys.executable,
                __file__,
                "--config",
                "mlp",
                "--one",
                str(k),
                name,
                "--threads",
                str(args.threads),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            mem[name] = json.loads(lines[-1])["peak_bytes"] if lines else float("nan")
        rows.append({"k": k, "times": t, "peak_bytes": mem})
        print(
            f"k={k}: "
            + "  ".join(f"{m} {v['ratio']:.2f}x (cpu {v['cpu_ratio']:.2f}x)" for m, v in t.items())
            + f"  | peak full {mem['full'] / 2**20:.1f} MiB, loop {mem['loop'] / 2**20:.1f} MiB",
            flush=True,
        )
    meta = {
        "config": "mlp",
        "batch": 256,
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out).with_name("step_cost_mlp.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| k | " + " | ".join(methods) + " | peak full / loop (MiB) |")
    print("|---" * (len(methods) + 2) + "|")
    for r in rows:
        cells = [
            f"{r['times'][m]['ratio']:.2f}× ({r['times'][m]['time_s'] * 1e3:.1f} ms)"
            for m in methods
        ]
        print(
            f"| {r['k']} | "
            + " | ".join(cells)
            + f" | {r['peak_bytes']['full'] / 2**20:.1f} / {r['peak_bytes']['loop'] / 2**20:.1f} |"
        )
    print("\nprocess CPU time (one thread: what the step costs when the machine is not shared)")
    print("\n| k | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for r in rows:
        cells = [
            f"{r['times'][m]['cpu_ratio']:.2f}× ({r['times'][m]['cpu_s'] * 1e3:.1f} ms)"
            for m in methods
        ]
        print(f"| {r['k']} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 256 on cuda, 32 on cpu")
    ap.add_argument("--width", type=int, default=None, help="default 64 on cuda, 16 on cpu")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 10, 40])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[
            "sum",
            "full",
            "representation",
            "sketch8",
            "sketch32",
            "periodic10",
            "loop",
            "autojac",
            "autogram",
        ],
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "step_cost.json"))
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--config",
        choices=["resnet", "mlp"],
        default="resnet",
        help="resnet: ResNet-18-style encoder, one process per method; "
        "mlp: see the module docstring",
    )
    ap.add_argument("--rounds", type=int, default=15, help="mlp: interleaved timing rounds")
    ap.add_argument("--mem-reps", type=int, default=3, help="mlp: steps measured for peak memory")
    import sys as _sys

    args = ap.parse_args()
    args.methods_given = "--methods" in _sys.argv
    if args.config == "mlp":
        if args.one is not None:
            torch.set_num_threads(args.threads)
            print(
                json.dumps({"peak_bytes": mlp_peak(int(args.one[0]), args.one[1], args.mem_reps)})
            )
            return
        if not any(a == "--warmup" for a in _sys.argv):
            args.warmup = 3
        mlp_main(args)
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 32)
    width = args.width or (64 if cuda else 16)
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one(args, int(args.one[0]), args.one[1])))
        return
    import subprocess
    import sys

    from rich.progress import track

    results = []
    jobs = [(k, m) for k in args.ks for m in args.methods]
    for k, name in track(jobs, description="step cost"):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(k),
            name,
            "--device",
            args.device,
            "--batch",
            str(batch),
            "--width",
            str(width),
            "--warmup",
            str(args.warmup),
            "--reps",
            str(args.reps),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if lines:
            r = json.loads(lines[-1])
        else:
            r = {
                "k": k,
                "method": name,
                "time_s": float("nan"),
                "peak_bytes": float("nan"),
                "error": f"process failed (rc={proc.returncode}): {proc.stderr.strip()[-200:]}",
            }
        results.append(r)
        t, mem, err = r["time_s"], r["peak_bytes"], r["error"]
        print(
            f"k={k:3d} {name:15s} {t * 1e3:9.1f} ms  {mem / 2**20:9.1f} MiB  {err or ''}",
            flush=True,
        )
    meta = {
        "device": str(device),
        "batch": batch,
        "width": width,
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    base = {r["k"]: r for r in results if r["method"] == "sum"}
    print(
        "\n| k | method | time/step (ms) | × sum | peak mem (MiB) | × sum |"
        "\n|---|---|---|---|---|---|"
    )
    for r in results:
        b = base.get(r["k"])
        rt = r["time_s"] / b["time_s"] if b else float("nan")
        rm = r["peak_bytes"] / b["peak_bytes"] if b and b["peak_bytes"] > 0 else float("nan")
        print(
            f"| {r['k']} | {r['method']} | {r['time_s'] * 1e3:.1f} | {rt:.2f} "
            f"| {r['peak_bytes'] / 2**20:.1f} | {rm:.2f} |"
            + (f" {r['error']}" if r["error"] else "")
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in args.methods:
            rows = [r for r in results if r["method"] == name and r["error"] is None]
            if not rows:
                continue
            ks = [r["k"] for r in rows]
            axes[0].plot(ks, [r["time_s"] / base[r["k"]]["time_s"] for r in rows], "o-", label=name)
            axes[1].plot(
                ks,
                [r["peak_bytes"] / max(base[r["k"]]["peak_bytes"], 1) for r in rows],
                "o-",
                label=name,
            )
        for ax, t in zip(axes, ["time / summed loss", "peak memory / summed loss"], strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("k")
            ax.set_title(t)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(args.out).with_suffix(".png"), dpi=100)
    except Exception as e:  # plotting must not lose the numbers
        print("plot failed:", e)


if __name__ == "__main__":
    main()
