"""Per-step overhead of every registered method relative to Mean, and Nash-MTL's exact solver
against a transcription of the reference implementation's cvxpy (ECOS) CCP loop; then the solve
time of the Gram-based methods on both implementations (``impl="torch"``: the batched torch
path, ``impl="auto"``: the compiled host kernels on the CPU), measured in the same run.

    python benchmarks/methods.py [--device cpu|cuda] [--ks 2 10 40] [--reps 5]
    python benchmarks/methods.py --solve-only [--solve-reps 31] [--batch 64]
    python benchmarks/methods.py --methods krum pcd config ... [--no-nash]   (a subset, with Mean)

Every method is built by its registry entry's example for k tasks (``MethodInfo.example``), so
methods with required arguments (Krum, Constant, TrimmedMean, prior-loss) are included. The
Jacobian aggregators (``needs`` has "jacobian") step through the same ``taskgrad.backward``,
which materializes J over the shared trunk for them; their "solve" is ``aggregate(J)`` on a
k × 2000 Jacobian.

Writes benchmarks/out/methods.json and benchmarks/out/methods.png (full run) and
benchmarks/out/methods_solve.json (solve times); prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import taskgrad
from taskgrad import methods as M

OUT = Path(__file__).parent / "out"


def make_model(k: int, device: str, width: int = 256, depth: int = 3, d_in: int = 64):
    torch.manual_seed(0)
    layers = []
    for i in range(depth):
        layers += [torch.nn.Linear(d_in if i == 0 else width, width), torch.nn.ReLU()]
    trunk = torch.nn.Sequential(*layers).to(device)
    heads = torch.nn.Linear(width, k).to(device)
    x = torch.randn(128, d_in, device=device)
    y = torch.randn(128, k, device=device)
    return trunk, heads, x, y


def _mean_step(rows: list[dict], k: int) -> float:
    """The mean step time (s) measured at k."""
    return next(r["mean_step_s"] for r in rows if r["k"] == k and "mean_step_s" in r)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(name: str, k: int, **kw):
    """The registry's example instance of ``name`` for k tasks."""
    return M.infos()[name].example(k, **kw)


def _stepper(method, k: int, device: str):
    """A closure running one full training step with ``method`` on its own copy of the model."""
    trunk, heads, x, y = make_model(k, device)
    params = list(trunk.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        out = heads(trunk(x))
        losses = ((out - y) ** 2).mean(0) + 0.1
        taskgrad.backward(list(losses), params=list(trunk.parameters()), method=method)
        opt.step()

    return step


def step_time(method, k: int, device: str, reps: int) -> tuple[float, float]:
    """Median seconds of one full step (forward, taskgrad.backward(method), optimizer step) and of
    a Mean step, interleaved round by round so
    that the load of a shared machine hits both alike; one warm-up step each."""
    fns = {"method": _stepper(method, k, device), "mean": _stepper(M.Mean(), k, device)}
    t = interleaved_medians(fns, reps, device)
    return t["method"], t["mean"]


def solve_time(
    method, J: torch.Tensor, G: torch.Tensor, L: torch.Tensor, reps: int, device: str
) -> float:
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        if "jacobian" in method.needs:
            method.aggregate(J, losses=L)
        else:
            method(gram=G, losses=L)
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def nash_reference_loop(GTG, prev_alpha, optim_niter: int = 20):
    """Transcription of the reference Nash-MTL solver: a sequence of convex problems (the
    concave part of the objective linearized at the previous α), solved by cvxpy + ECOS with
    warm starts, stopping on ‖Gα − 1/α‖ < 1e-3 or a step < 1e-6. GTG normalized by its norm."""
    import cvxpy as cp
    import numpy as np

    k = GTG.shape[0]
    nf = np.linalg.norm(GTG)
    Gn = GTG / nf
    alpha = cp.Variable(k, nonneg=True)
    prev = cp.Parameter(k, value=prev_alpha)
    Gp = cp.Parameter((k, k), value=Gn)
    nfp = cp.Parameter(1, value=np.array([nf]))
    Ga = Gp @ alpha
    lin = (1 / prev + (1 / (Gp @ prev)) @ Gp) @ (alpha - prev)
    cons = [-cp.log(alpha[i] * nfp) - cp.log(Ga[i]) <= 0 for i in range(k)]
    prob = cp.Problem(cp.Minimize(cp.sum(Ga) + lin / nfp), cons)
    a_t = prev_alpha
    for _ in range(optim_niter):
        alpha.value = a_t
        prev.value = a_t
        try:
            prob.solve(solver=cp.ECOS, warm_start=True, max_iters=100)
        except Exception:
            alpha.value = prev.value
        if (
            alpha.value is None
            or np.linalg.norm(Gn @ a_t - 1 / (a_t + 1e-10)) < 1e-3
            or np.linalg.norm(alpha.value - prev.value) < 1e-6
        ):
            break
        a_t = alpha.value
    return a_t


def solve_grams(k: int, device: str, batch: int = 0) -> dict[str, torch.Tensor]:
    """Fixed Gram matrices (float32, as a training loop produces them): "aligned" gradients with
    a common component (no conflicts: the projections are no-ops) and "conflicting" ones (about
    half of the pairs conflict). With ``batch`` > 0, that many such Grams stacked."""
    out = {}
    for name, common in (("aligned", 1.0), ("conflicting", 0.0)):
        g = torch.Generator().manual_seed(1)
        shape = (batch, k, 2000) if batch else (k, 2000)
        J = torch.randn(*shape, generator=g) + common
        out[name] = (J @ J.transpose(-1, -2)).to(device)
    return out


def interleaved_medians(fns: dict[str, object], reps: int, device: str) -> dict[str, float]:
    """Median seconds of each callable, the callables alternating rep by rep (so that the load
    of a shared machine hits them alike); one untimed warm-up call each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for n, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: sorted(t)[len(t) // 2] for n, t in times.items()}


def solve_benchmark(args) -> dict:
    """Solve ms of every Gram-based method at each k: ``impl="torch"`` (the batched reference
    path, the implementation before the compiled kernels) against ``impl="auto"``."""
    from rich.progress import track

    names = [n for n in M.available() if "gram" in build(n, 2).needs]
    if args.methods:
        names = [n for n in names if n in args.methods]
    rows = []
    for batch in [0] + ([args.batch] if args.batch else []):
        for k in args.ks:
            grams = solve_grams(k, args.device, batch)
            L = (torch.rand(*((batch,) if batch else ()), k) + 0.5).to(args.device)
            for name in track(names, description=f"solve k={k} batch={batch or 1}"):
                for case, G in grams.items():
                    fns = {}
                    for impl in ("torch", "auto"):
                        try:
                            m = build(name, k, impl=impl)
                        except TypeError:  # a method with one implementation: timed once
                            single = build(name, k)
                            fns = {"auto": (lambda m=single, G=G, L=L: m(gram=G, losses=L))}
                            break
                        fns[impl] = lambda m=m, G=G, L=L: m(gram=G, losses=L)
                    try:
                        t = interleaved_medians(fns, args.solve_reps, args.device)
                    except M.UndefinedMethodError:
                        continue
                    two = "torch" in t
                    rows.append(
                        {
                            "k": k,
                            "batch": batch or 1,
                            "method": name,
                            "case": case,
                            "two_impls": two,
                            "torch_s": t.get("torch", t["auto"]),
                            "auto_s": t["auto"],
                            "speedup": t["torch"] / t["auto"] if two else None,
                        }
                    )
    return {"device": args.device, "threads": args.threads, "reps": args.solve_reps, "rows": rows}


def print_solve_table(res: dict, ks: list[int]) -> None:
    rows = res["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        for case in ("aligned", "conflicting"):
            sel = [r for r in rows if r["batch"] == batch and r["case"] == case]
            if not sel:
                continue
            print(
                f"\n### Solve ms, {case} gradients, batch {batch} (device {res['device']}, torch → "
                "auto)\n"
            )
            cols = " | ".join(f"k={k} torch | k={k} auto" for k in ks)
            print(f"| method | {cols} | k={ks[-1]} speedup |")
            print("|---|" + "---|---|" * len(ks) + "---|")
            for name in sorted({r["method"] for r in sel}):
                cells = []
                last = None
                for k in ks:
                    r = next((r for r in sel if r["k"] == k and r["method"] == name), None)
                    cells += (
                        [f"{1e3 * r['torch_s']:.3f}", f"{1e3 * r['auto_s']:.3f}"]
                        if r
                        else ["-", "-"]
                    )
                    last = r
                sp = f"{last['speedup']:.1f}x" if last and last["speedup"] else "(one impl)"
                print(f"| {name} | " + " | ".join(cells) + f" | {sp} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 10, 40])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--solve-only",
        action="store_true",
        help="only the solve-time comparison (no training steps)",
    )
    ap.add_argument(
        "--solve-reps", type=int, default=31, help="repetitions of each solve (median reported)"
    )
    ap.add_argument(
        "--batch", type=int, default=64, help="also time a batch of this many Grams (0: skip)"
    )
    ap.add_argument(
        "--methods", nargs="+", default=None, help="only these registered methods (and Mean)"
    )
    ap.add_argument(
        "--no-nash", action="store_true", help="skip the Nash-MTL reference-loop comparison"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from rich.progress import track

    OUT.mkdir(parents=True, exist_ok=True)
    solve = solve_benchmark(args)
    (OUT / "methods_solve.json").write_text(json.dumps(solve, indent=1))
    print_solve_table(solve, args.ks)
    if args.solve_only:
        return
    names = list(M.available())
    if args.methods:
        names = [n for n in names if n in args.methods or n == "mean"]
    rows = []
    for k in args.ks:
        torch.manual_seed(1)
        J = (
            torch.randn(k, 2000, device=args.device) + 1.0
        )  # a common component keeps Nash-MTL defined
        G = J @ J.T
        L = torch.rand(k, device=args.device) + 0.5
        for name in track(names, description=f"k={k}"):
            try:
                t, base = step_time(build(name, k), k, args.device, args.reps)
                s = solve_time(build(name, k), J, G, L, args.reps, args.device)
                rows.append(
                    {
                        "k": k,
                        "method": name,
                        "step_s": t,
                        "mean_step_s": base,
                        "ratio": t / base,
                        "solve_s": s,
                    }
                )
            except M.UndefinedMethodError as e:
                rows.append({"k": k, "method": name, "error": str(e)[:80]})
    # Nash-MTL: exact Newton vs the reference CCP loop on the same Gram matrices
    nash = []
    import numpy as np

    for k in [] if args.no_nash else args.ks:
        torch.manual_seed(2)
        J = torch.randn(k, 2000, dtype=torch.float64) + 1.0
        G = J @ J.T
        t0 = time.perf_counter()
        for _ in range(args.reps):
            a = M.NashMTL(max_norm=0)(gram=G.to(args.device))
        t_ours = (time.perf_counter() - t0) / args.reps
        t0 = time.perf_counter()
        reps_ref = 1 if k >= 40 else args.reps
        for _ in range(reps_ref):
            a_ref = nash_reference_loop(G.numpy(), np.ones(k))
        t_ref = (time.perf_counter() - t0) / reps_ref
        a = a.cpu().double()
        res_ours = float((a * (G @ a) - 1).abs().max())
        ar = torch.tensor(a_ref)
        res_ref = float((ar * (G @ ar) - 1).abs().max())
        nash.append(
            {
                "k": k,
                "ours_s": t_ours,
                "reference_s": t_ref,
                "speedup": t_ref / t_ours,
                "kkt_ours": res_ours,
                "kkt_reference": res_ref,
            }
        )
    result = {"device": args.device, "threads": args.threads, "rows": rows, "nash": nash}
    (OUT / "methods.json").write_text(json.dumps(result, indent=1))

    print(f"\n### Step time relative to Mean, interleaved medians (device {args.device})\n")
    print(
        "| method | "
        + " | ".join(f"k={k} ratio" for k in args.ks)
        + " | "
        + " | ".join(f"k={k} solve ms" for k in args.ks)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(args.ks)))
    for name in names:
        cells, solves = [], []
        for k in args.ks:
            r = next(r for r in rows if r["k"] == k and r["method"] == name)
            cells.append(f"{r['ratio']:.2f}" if "ratio" in r else "undefined")
            solves.append(f"{1e3 * r['solve_s']:.2f}" if "solve_s" in r else "-")
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(solves) + " |")
    print(
        "\nMean step (ms): " + ", ".join(f"k={k}: {1e3 * _mean_step(rows, k):.2f}" for k in args.ks)
    )
    print("\n### Nash-MTL: exact Newton vs the reference cvxpy/ECOS loop\n")
    print("| k | ours (ms) | reference loop (ms) | speedup | max abs(a(Ga)-1) ours | reference |")
    print("|---|---|---|---|---|---|")
    for n in nash:
        print(
            f"| {n['k']} | {1e3 * n['ours_s']:.2f} | {1e3 * n['reference_s']:.1f} | "
            f"{n['speedup']:.0f}x | {n['kkt_ours']:.1e} | {n['kkt_reference']:.1e} |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 4))
        width = 0.8 / len(args.ks)
        for i, k in enumerate(args.ks):
            vals = [
                next(
                    (
                        r.get("ratio", float("nan"))
                        for r in rows
                        if r["k"] == k and r["method"] == n
                    ),
                    float("nan"),
                )
                for n in names
            ]
            ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"k={k}")
        ax.set_xticks([j + 0.4 for j in range(len(names))], names, rotation=75, fontsize=7)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_ylabel("step time / Mean")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "methods.png", dpi=120)
    except Exception as e:  # plotting is a convenience
        print(f"(plot skipped: {e})")


if __name__ == "__main__":
    main()
