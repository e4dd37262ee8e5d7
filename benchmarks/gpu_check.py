"""Every GPU target of the project in one short run, for the few minutes a GPU is lent.

    python benchmarks/gpu_check.py --device cuda --out gpu-check      # <= 8 min on one H100/H200
    python benchmarks/gpu_check.py --device cpu --smoke --out DIR     # tiny sizes, < 2 min

In order, each in its own process with its own time budget (a target that runs past its budget
is stopped and the run goes on with the next one):

1. ``cuda-tests``: the CUDA tests, ``pytest -m gpu``.
2. ``batched-solves``: ``taskgrad.solvers.primary_aux`` on 1024 Gram matrices with k = 128,
   target < 10 ms (float64 decides; float32 is reported beside it).
3. ``step-*``: one training step at k = 40, batch 256, ResNet-18 width 64, against the summed
   loss: the representation source <= 1.15x its time; the full-parameter source faster than
   TorchJD's autogram and <= 1.5x the summed step's peak memory; the sketch with r = 32 <= 2x.
4. ``linear-speedup``: ``taskgrad.linear.MultiTaskLasso`` on the GPU at n = p = 20,000, T = 20
   against scikit-learn on the CPU, target >= 10x. scikit-learn is stopped once it has taken
   12x taskgrad's time; the ratio is then a lower bound (marked >=), which decides the target.
5. ``hvp-cost``: the Hessian-vector product that ``NewtonCG`` takes inside CG (double backward
   on the reused gradient graph) on the ResNet-18 encoder, target <= 2.5x one gradient.
6. ``ddp``: with two or more GPUs, DDP over NCCL: taskgrad's weights and parameters after
   three steps against one process on the global batch (float64, <= 1e-6), and the traffic/time
   table of ``benchmarks/distributed.py``. The smoke run does the same on two gloo CPU ranks.

Sizes are those that decide each target; only repetitions are reduced. ``--smoke`` runs the same
code at tiny sizes (its figures decide nothing). Writes ``DIR/gpu_check.json`` (one entry per
target: name, target, measured, passed, the command that reproduces it at full length, status)
and ``DIR/gpu_check.md`` (a table for ``benchmarks/RESULTS.md``, plus the commands of the
full-length runs, which are not part of the check). Exit status 1 when a target crashed or ran
out of time, 0 otherwise (a missed target is a result, not a crash). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the benchmark scripts beside this one are imported as modules
    sys.path.insert(0, str(HERE))

# Commands of the full-length runs: one each, documented here and in gpu_check.md, never run by
# the check itself (hours on a GPU).
FULL_LENGTH = [
    (
        "MultiMNIST, every method, 10 epochs",
        "taskgrad bench benchmarks/configs/multimnist.toml --device cuda",
    ),
    (
        "MultiFashion, every method, 10 epochs",
        "taskgrad bench benchmarks/configs/multifashion.toml --device cuda",
    ),
    ("Census-income, 5 epochs", "taskgrad bench benchmarks/configs/census.toml --device cuda"),
    ("QM9, 30 epochs", "taskgrad bench benchmarks/configs/qm9.toml --device cuda"),
    ("Step cost, every source at k = 2, 4, 10, 40", "python benchmarks/step_cost.py --device cuda"),
    ("Batched solver grid, float64 and float32", "python benchmarks/solvers.py --device cuda"),
    ("Method solve and step times", "python benchmarks/methods.py --device cuda"),
    ("Sparse linear models, every case", "python benchmarks/linear.py --device cuda"),
    (
        "Second order: products and optimizers",
        "python benchmarks/second_order.py all --device cuda --width 64 --batch 128",
    ),
    (
        "DDP traffic and time (every GPU of the machine, NCCL)",
        "python benchmarks/distributed.py --device cuda",
    ),
]


@dataclass
class Entry:
    """One target's outcome: ``passed`` is None when nothing was decided (skipped, stopped,
    crashed)."""

    name: str
    target: str
    measured: str
    value: float | None
    passed: bool | None
    reproduce: str
    status: str = "ok"  # ok | skipped | timeout | error
    details: dict[str, Any] | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------------- helpers
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn: Callable[[], Any], device: str, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


# ----------------------------------------------------------------------------------- targets
def cuda_tests(a: argparse.Namespace) -> list[Entry]:
    """``pytest -m gpu`` in a child process; passed when it exits 0 (and, on a GPU, ran
    something)."""
    files = ["tests"]
    if a.smoke:  # only the files that hold CUDA tests: collecting the whole suite takes longer
        files = sorted(
            str(p.relative_to(ROOT))
            for p in (ROOT / "tests").rglob("test_*.py")
            if "mark.gpu" in p.read_text(encoding="utf-8")
        )
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[-15:]), flush=True)
    summary = lines[-1].strip("= ") if lines else f"no output (rc={proc.returncode})"
    counts = {
        word: int(n)
        for n, word in (
            part.split()[:2]
            for part in summary.split(" in ")[0].split(", ")
            if part.split()[0].isdigit()
        )
    }
    ran = counts.get("passed", 0)
    ok = proc.returncode == 0 and (ran > 0 or not a.device.startswith("cuda"))
    return [
        Entry(
            "cuda-tests",
            "pytest -m gpu passes",
            summary,
            float(ran),
            ok,
            "python -m pytest -m gpu",
            details={"returncode": proc.returncode, "counts": counts, "stderr": proc.stderr[-500:]},
        )
    ]


def batched_solves(a: argparse.Namespace) -> list[Entry]:
    """One batched ``primary_aux`` call on B Gram matrices of k tasks (solvers.make_grams)."""
    import torch
    from solvers import make_grams

    from taskgrad.solvers import primary_aux, primary_aux_kkt_residual

    k, B = (8, 16) if a.smoke else (128, 1024)
    found: dict[str, Any] = {}
    for dt in ("float64", "float32"):
        G = make_grams(k, B, getattr(torch, dt), a.device)
        t = _median_time(lambda G=G: primary_aux(G), a.device, reps=3 if a.smoke else 10, warmup=2)
        w = primary_aux(G)
        found[dt] = {
            "ms": 1e3 * t,
            "kkt": float(primary_aux_kkt_residual(w.double(), G.double()).max()),
        }
        print(f"  {dt}: {1e3 * t:.3f} ms, worst KKT residual {found[dt]['kkt']:.1e}", flush=True)
    t64 = found["float64"]["ms"]
    return [
        Entry(
            "batched-solves",
            f"{B} problems, k = {k}: < 10 ms (float64)",
            f"{t64:.2f} ms (float32 {found['float32']['ms']:.2f} ms)",
            t64,
            t64 < 10.0,
            "python benchmarks/solvers.py --device cuda --ks 128 --batches 1024 --repeats 10",
            details=found,
        )
    ]


def step_costs(a: argparse.Namespace) -> list[Entry]:
    """step_cost.one for the summed loss and each source; ratios to the summed loss."""
    import torch
    from step_cost import one

    k, batch, width = (4, 8, 8) if a.smoke else (40, 256, 64)
    ns = SimpleNamespace(
        device=a.device, batch=batch, width=width, warmup=1, reps=2 if a.smoke else 3
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in ("sum", "representation", "full", "autogram", "sketch32"):
        rows[name] = one(ns, k, name)
        r = rows[name]
        print(
            f"  {name:15s} {r['time_s'] * 1e3:9.1f} ms  "
            f"{r['peak_bytes'] / 2**20:9.1f} MiB  {r['error'] or ''}",
            flush=True,
        )
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    base_t, base_m = rows["sum"]["time_s"], rows["sum"]["peak_bytes"]
    rep = (
        "python benchmarks/step_cost.py --device cuda --ks 40 --batch 256 --width 64 "
        "--methods sum representation full autogram sketch32 --warmup 2 --reps 10"
    )
    size = f"k = {k}, batch {batch}, width {width}"

    def ratio(name: str, key: str = "time_s") -> float:
        b = base_t if key == "time_s" else base_m
        return rows[name][key] / b if b and b > 0 else math.nan

    def entry(name: str, target: str, value: float, ok: bool, measured: str) -> Entry:
        errors = {m: r["error"] for m, r in rows.items() if r["error"]}
        return Entry(
            name,
            f"{target} ({size})",
            measured,
            value,
            None if math.isnan(value) else bool(ok),
            rep,
            status="error" if math.isnan(value) else "ok",
            details={"rows": rows, "errors": errors},
        )

    r_rep = ratio("representation")
    r_full, r_ag, m_full = ratio("full"), ratio("autogram"), ratio("full", "peak_bytes")
    r_sk = ratio("sketch32")
    full_ok = r_full < r_ag and m_full <= 1.5
    return [
        entry(
            "step-representation",
            "representation source <= 1.15x summed-loss step",
            r_rep,
            r_rep <= 1.15,
            f"{r_rep:.2f}x",
        ),
        entry(
            "step-full",
            "full-parameter source faster than TorchJD autogram, peak memory <= 1.5x summed",
            r_full if not math.isnan(r_ag + m_full) else math.nan,
            full_ok,
            f"{r_full:.2f}x time (autogram {r_ag:.2f}x), {m_full:.2f}x memory",
        ),
        entry(
            "step-sketch32",
            "sketch r = 32 <= 2x summed-loss step",
            r_sk,
            r_sk <= 2.0,
            f"{r_sk:.2f}x",
        ),
    ]


def _sklearn_fit_seconds(n: int, p: int, T: int) -> None:
    """Child of ``linear_speedup``: fit scikit-learn's MultiTaskLasso once, print its time."""
    import warnings

    from linear import alpha_max, contenders, make_data

    X, Y = make_data(n, p, T, None)
    est = contenders("cpu")[0]["scikit-learn"][0](alpha_max(X, Y) / 20, False)
    print("data ready", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X, Y)
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a child started with ``start_new_session`` and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_at(proc: subprocess.Popen, when: float) -> None:
    """Kill ``proc``'s group at monotonic time ``when`` unless it has ended (run in a thread)."""
    while proc.poll() is None and time.monotonic() < when:
        time.sleep(0.1)
    if proc.poll() is None:
        _kill_group(proc)


def linear_speedup(a: argparse.Namespace) -> list[Entry]:
    """taskgrad's MultiTaskLasso (torch APG on the GPU) against scikit-learn, same data and α."""
    import warnings

    import numpy as np
    from linear import alpha_max, contenders, make_data, reference_gap, warmup

    n, T = (200, 4) if a.smoke else (20000, 20)
    t_start = time.monotonic()
    X, Y = make_data(n, n, T, None)
    alpha = alpha_max(X, Y) / 20
    warmup(a.device)
    est = contenders(a.device)[0]["taskgrad"][0](alpha, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _sync(a.device)
        t0 = time.perf_counter()
        est.fit(X, Y)
        _sync(a.device)
        t_ours = time.perf_counter() - t0
    gap = reference_gap(X, Y, np.asarray(est.coef_), np.asarray(est.intercept_), alpha)
    gap_target = 1e-4 * float(((Y - Y.mean(0)) ** 2).sum()) / n
    del X, Y
    print(
        f"  taskgrad ({a.device}): {t_ours:.2f} s, duality gap {gap:.2e} (target {gap_target:.2e})",
        flush=True,
    )
    # scikit-learn is stopped once it has taken 12x taskgrad's time: the ratio is then a lower bound
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sklearn-fit", str(n), str(n), str(T)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    t_sk: float | None = None
    t_data = time.monotonic()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("data ready"):  # the clock starts when the child's data exist
                t_data = time.monotonic()
                left = a.budget_s - (t_data - t_start) - 5.0
                threading.Thread(
                    target=_kill_at,
                    args=(proc, t_data + max(1.0, min(left, 12.0 * t_ours))),
                    daemon=True,
                ).start()
            elif line.startswith("{"):
                t_sk = float(json.loads(line)["seconds"])
        proc.wait()
    finally:
        _kill_group(proc)
    stopped = t_sk is None
    sk = (time.monotonic() - t_data) if stopped else t_sk
    ratio = sk / t_ours
    print(
        f"  scikit-learn (cpu): {'stopped after ' if stopped else ''}{sk:.2f} s -> {ratio:.1f}x",
        flush=True,
    )
    decided = not stopped or ratio >= 10.0
    return [
        Entry(
            "linear-speedup",
            f"MultiTaskLasso n = p = {n}, T = {T}: >= 10x scikit-learn",
            f"{'>= ' if stopped else ''}{ratio:.1f}x "
            f"({t_ours:.3g} s vs {'>= ' if stopped else ''}{sk:.3g} s)",
            ratio,
            (ratio >= 10.0) if decided else None,
            "python benchmarks/linear.py --device cuda",
            details={
                "taskgrad_s": t_ours,
                "sklearn_s": sk,
                "sklearn_stopped": stopped,
                "gap": gap,
                "gap_target": gap_target,
            },
        )
    ]


def hvp_cost(a: argparse.Namespace) -> list[Entry]:
    """second_order.hvp_cost: every product's time relative to one gradient."""
    from second_order import hvp_cost as measure

    width, batch = (8, 4) if a.smoke else (64, 128)
    res = measure(
        SimpleNamespace(device=a.device, width=width, batch=batch, reps=2 if a.smoke else 5)
    )
    ratios = res["ratio_to_gradient"]
    key = next(k for k in ratios if "marginal" in k and k.startswith("HVP"))
    r = ratios[key]
    scratch = next(v for k, v in ratios.items() if k.startswith("HVP forward-over-reverse ("))
    return [
        Entry(
            "hvp-cost",
            f"Hessian-vector product inside CG <= 2.5x a gradient (width {width}, batch {batch})",
            f"{r:.2f}x (from scratch: fwd-over-rev {scratch:.2f}x)",
            r,
            r <= 2.5,
            "python benchmarks/second_order.py hvp-cost --device cuda --width 64 --batch 128",
            details=res,
        )
    ]


# ---------------------------------------------------------------------- DDP against one process
DDP_STEPS, DDP_B, DDP_K = 3, 32, 4


def _ddp_model(device: Any) -> Any:
    import torch
    from distributed import Net

    torch.manual_seed(0)
    return Net(16, 32, DDP_K).to(device=device, dtype=torch.float64)


def _ddp_batch(step: int, device: Any) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(DDP_B, 16, generator=g, dtype=torch.float64)
    y = torch.randn(DDP_B, DDP_K, generator=g, dtype=torch.float64)
    return x.to(device), y.to(device)


def _ddp_source(name: str, model: Any) -> Any:
    from taskgrad.sources import FullGram, RepresentationGram

    return (
        RepresentationGram()
        if name == "representation"
        else FullGram(list(model.encoder.parameters()))
    )


def _ddp_worker(rank: int, world: int, device_type: str, out_prefix: str) -> None:
    """Three SGD steps of DistributedStep(MGDA) per source on this rank's shard; save the
    results."""
    import torch
    from distributed import _losses
    from torch import nn

    import taskgrad
    from taskgrad.distributed import DistributedStep, FeatureHook

    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    out: dict[str, Any] = {}
    for src in ("representation", "full"):
        base = _ddp_model(device)
        ddp = nn.parallel.DistributedDataParallel(
            base, device_ids=[rank] if device_type == "cuda" else None
        )
        hook = FeatureHook(base.encoder)
        step = DistributedStep(taskgrad.MGDA(), _ddp_source(src, base), module=ddp)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        weights = []
        shard = DDP_B // world
        for t in range(DDP_STEPS):
            x, y = _ddp_batch(t, device)
            xr, yr = x[rank * shard : (rank + 1) * shard], y[rank * shard : (rank + 1) * shard]
            opt.zero_grad(set_to_none=True)
            pred, _ = ddp(xr)
            res = step.backward(_losses(pred, yr), features=hook.value)
            weights.append(res.weights.detach().cpu())
            opt.step()
        hook.remove()
        out[src] = {"weights": weights, "params": [p.detach().cpu() for p in base.parameters()]}
    torch.save(out, f"{out_prefix}{rank}.pt")


def _ddp_reference(device: Any) -> dict[str, Any]:
    """The same steps in one process on the global batch (taskgrad.backward, same source)."""
    import torch
    from distributed import _losses

    import taskgrad

    out: dict[str, Any] = {}
    for src in ("representation", "full"):
        model = _ddp_model(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        weights = []
        for t in range(DDP_STEPS):
            x, y = _ddp_batch(t, device)
            opt.zero_grad(set_to_none=True)
            pred, z = model(x)
            L = _losses(pred, y)
            if src == "representation":
                res = taskgrad.backward(L, method=taskgrad.MGDA(), features=z)
            else:
                res = taskgrad.backward(L, list(model.encoder.parameters()), method=taskgrad.MGDA())
            weights.append(res.weights.detach().cpu())
            opt.step()
        out[src] = {"weights": weights, "params": [p.detach().cpu() for p in model.parameters()]}
    return out


def ddp_check(a: argparse.Namespace) -> list[Entry]:
    """DDP over NCCL (gloo on CPU in the smoke run) against one process, then the traffic table."""
    import torch
    from distributed import worker as traffic_worker

    from taskgrad.distributed import run_on_ranks

    cuda = a.device.startswith("cuda")
    world = torch.cuda.device_count() if cuda else 2
    rep = "python benchmarks/distributed.py --device cuda"
    if world < 2:
        return [
            Entry(
                "ddp",
                "DDP over NCCL equals one process (<= 1e-6)",
                "not run: one GPU",
                None,
                None,
                rep,
                status="skipped",
            )
        ]
    backend = "nccl" if cuda else "gloo"
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_ddp_"))
    ref = _ddp_reference(torch.device("cuda", 0) if cuda else torch.device("cpu"))
    run_on_ranks(
        _ddp_worker,
        world,
        args=("cuda" if cuda else "cpu", str(tmp / "rank")),
        backend=backend,
        timeout=max(30.0, a.budget_s / 2),
        start_method="spawn" if cuda else None,
    )
    worst = 0.0
    for r in range(world):
        got = torch.load(tmp / f"rank{r}.pt", weights_only=False)
        for src in ref:
            for w, wr in zip(got[src]["weights"], ref[src]["weights"], strict=True):
                worst = max(worst, float((w - wr).abs().max()))
            for p, pr in zip(got[src]["params"], ref[src]["params"], strict=True):
                worst = max(worst, float((p - pr).abs().max()))
    print(f"  {world} ranks ({backend}) vs one process: worst difference {worst:.1e}", flush=True)
    # traffic and time per step: benchmarks/distributed.py's worker on every rank
    k, width = (2, 32) if a.smoke else (8, 512)
    configs = [
        {
            "k": k,
            "width": width,
            "d_in": 64,
            "batch": 64 if a.smoke else 256,
            "source": s,
            "r": 16,
            "device": "cuda" if cuda else "cpu",
        }
        for s in ("sum", "representation", "sketch", "full")
    ]
    path = tmp / "traffic.json"
    run_on_ranks(
        traffic_worker,
        world,
        args=(configs, 1, 2 if a.smoke else 5, str(path)),
        backend=backend,
        timeout=max(30.0, a.budget_s / 2),
        start_method="spawn" if cuda else None,
    )
    rows = json.loads(path.read_text())
    base = next(r["median_s"] for r in rows if r["source"] == "sum")
    table = [
        {
            "source": r["source"],
            "ms": 1e3 * r["median_s"],
            "x_sum": r["median_s"] / base,
            "taskgrad_numbers": r["taskgrad_numel_per_step"],
            "ddp_numbers": r["ddp_grad_numel"],
        }
        for r in rows
    ]
    for r in table:
        print(
            f"  {r['source']:15s} {r['ms']:8.2f} ms {r['x_sum']:6.2f}x sum  "
            f"{r['taskgrad_numbers']:.0f} taskgrad numbers (DDP: {r['ddp_numbers']})",
            flush=True,
        )
    return [
        Entry(
            "ddp",
            f"DDP over {backend.upper()} ({world} ranks) equals one process (<= 1e-6, float64)",
            f"{worst:.1e}",
            worst,
            worst <= 1e-6,
            rep,
            details={"traffic": table},
        )
    ]


@dataclass
class Job:
    name: str
    run: Callable[[argparse.Namespace], list[Entry]]
    budget_s: float  # on a GPU; the smoke run gives each job a fixed small budget
    names: tuple[str, ...]  # the entries it makes (placeholders when it is stopped)
    target: str
    reproduce: str


JOBS = [
    Job(
        "cuda-tests",
        cuda_tests,
        75,
        ("cuda-tests",),
        "pytest -m gpu passes",
        "python -m pytest -m gpu",
    ),
    Job(
        "batched-solves",
        batched_solves,
        25,
        ("batched-solves",),
        "1024 problems, k = 128: < 10 ms",
        "python benchmarks/solvers.py --device cuda --ks 128 --batches 1024 --repeats 10",
    ),
    Job(
        "step-cost",
        step_costs,
        130,
        ("step-representation", "step-full", "step-sketch32"),
        "step cost at k = 40, batch 256, width 64",
        "python benchmarks/step_cost.py --device cuda --ks 40"
        " --methods sum representation full autogram sketch32",
    ),
    Job(
        "linear-speedup",
        linear_speedup,
        150,
        ("linear-speedup",),
        "n = p = 20000, T = 20: >= 10x scikit-learn",
        "python benchmarks/linear.py --device cuda",
    ),
    Job(
        "hvp-cost",
        hvp_cost,
        40,
        ("hvp-cost",),
        "HVP <= 2.5x a gradient",
        "python benchmarks/second_order.py hvp-cost --device cuda --width 64 --batch 128",
    ),
    Job(
        "ddp",
        ddp_check,
        60,
        ("ddp",),
        "DDP over NCCL equals one process",
        "python benchmarks/distributed.py --device cuda",
    ),
]


# ------------------------------------------------------------------------------------ driver
def _run_job(job: Job, a: argparse.Namespace, budget: float) -> list[Entry]:
    """Run one job in a child process (own session, killed as a group at the budget)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "entries.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one",
            job.name,
            "--device",
            a.device,
            "--result",
            str(result),
            "--job-budget",
            f"{budget:.1f}",
        ] + (["--smoke"] if a.smoke else [])
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return [
                Entry(
                    n,
                    job.target,
                    f"stopped at its {budget:.0f} s budget",
                    None,
                    None,
                    job.reproduce,
                    status="timeout",
                    seconds=time.monotonic() - t0,
                )
                for n in job.names
            ]
        finally:
            _kill_group(proc)  # grandchildren left behind (ranks, pytest workers)
        seconds = time.monotonic() - t0
        if rc != 0 or not result.exists():
            return [
                Entry(
                    n,
                    job.target,
                    f"crashed (exit status {rc}); see the log above",
                    None,
                    None,
                    job.reproduce,
                    status="error",
                    seconds=seconds,
                )
                for n in job.names
            ]
        entries = [Entry(**e) for e in json.loads(result.read_text())]
        for e in entries:
            e.seconds = seconds
        return entries


def _fmt_passed(p: bool | None) -> str:
    return "yes" if p is True else "**no**" if p is False else "-"


def markdown(entries: list[Entry], meta: dict[str, Any]) -> str:
    """The table for benchmarks/RESULTS.md and the full-length commands."""
    out = [
        f"GPU check of {meta['date']} on {meta['device_name']} (torch {meta['torch']}"
        f"{', smoke sizes: decides nothing' if meta['smoke'] else ''}); "
        f"command: `{meta['command']}`",
        "",
        "| target | goal | measured | passed | time (s) | reproduce at full length |",
        "|---|---|---|---|---:|---|",
    ]
    for e in entries:
        measured = e.measured if e.status == "ok" else f"{e.status}: {e.measured}"
        out.append(
            f"| {e.name} | {e.target} | {measured} | {_fmt_passed(e.passed)} | {e.seconds:.0f} | "
            f"`{e.reproduce}` |"
        )
    out += ["", "Full-length runs (not part of the check):", ""]
    out += [f"- {what}: `{cmd}`" for what, cmd in FULL_LENGTH]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --smoke)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "gpu_check")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a test that the script runs)")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole check (default 480 on a GPU, 110 with --smoke)",
    )
    ap.add_argument(
        "--only", nargs="+", default=None, choices=[j.name for j in JOBS], help="run only these"
    )
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--job-budget", dest="budget_s", type=float, default=60.0, help=argparse.SUPPRESS
    )
    ap.add_argument("--sklearn-fit", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.sklearn_fit is not None:
        _sklearn_fit_seconds(*a.sklearn_fit)
        return 0
    if a.one is not None:  # child: one job, entries to --result
        job = next(j for j in JOBS if j.name == a.one)
        entries = job.run(a)
        Path(a.result).write_text(json.dumps([e.__dict__ for e in entries], default=str))
        return 0

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda but torch sees no CUDA device "
            "(torch.cuda.is_available() is False); "
            "install a CUDA build of torch, or run `--device cpu --smoke` to test the script.",
            file=sys.stderr,
        )
        return 2
    if not a.device.startswith("cuda") and not a.smoke:
        print(
            "gpu_check: the targets are GPU targets; on the CPU add --smoke (tiny sizes).",
            file=sys.stderr,
        )
        return 2
    total = a.budget if a.budget is not None else (110.0 if a.smoke else 480.0)
    jobs = [j for j in JOBS if a.only is None or j.name in a.only]
    deadline = time.monotonic() + total
    meta = {
        "device": a.device,
        "smoke": a.smoke,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "CPU",
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "budget_s": total,
        "command": "python benchmarks/gpu_check.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    entries: list[Entry] = []
    for i, job in enumerate(jobs):
        left = deadline - time.monotonic()
        budget = min(
            job.budget_s * (total / 480.0 if a.smoke else 1.0) * (1.5 if a.smoke else 1.0), left
        )
        if budget < 5:
            entries += [
                Entry(
                    n,
                    job.target,
                    "not run: the check's time was spent",
                    None,
                    None,
                    job.reproduce,
                    status="timeout",
                )
                for n in job.names
            ]
            continue
        print(
            f"[{i + 1}/{len(jobs)}] {job.name} (budget {budget:.0f} s, {left:.0f} s left)",
            flush=True,
        )
        got = _run_job(job, a, budget)
        for e in got:
            print(
                f"    -> {e.name}: {e.measured} | passed: {_fmt_passed(e.passed)} ({e.status})",
                flush=True,
            )
        entries += got
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_check.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "entries": [e.__dict__ for e in entries],
                "full_length": [{"what": w, "command": c} for w, c in FULL_LENGTH],
            },
            indent=1,
            default=str,
        )
    )
    md = markdown(entries, meta)
    (a.out / "gpu_check.md").write_text(md)
    print("\n" + md)
    print(f"wrote {a.out / 'gpu_check.json'} and {a.out / 'gpu_check.md'}")
    return 1 if any(e.status in ("error", "timeout") for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
