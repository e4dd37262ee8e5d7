"""Time and KKT residual of taskgrad's primary/aux solver against quadprog and TorchJD.

For k tasks and a batch of B problems (Gram matrices of conflicting random gradients), measures
the wall time of one batched `taskgrad.solvers.primary_aux` call and of the per-problem loops of
quadprog (on the same NNLS dual) and of TorchJD's dual-cone projector (the same size of QP),
and the worst KKT residual of each answer (`primary_aux_kkt_residual`, scale free).

    python benchmarks/solvers.py                 # CPU grid, skips (k=512, B=1024) unless --full
    python benchmarks/solvers.py --device cuda   # GPU; also float32

Loops of the peers run on at most --peer-problems problems and are extrapolated linearly to B
(marked with ~). Results: printed table, benchmarks/out/solvers_<device>.{json,csv}.

    python benchmarks/solvers.py --batch-vs-loop  # batched call vs our own one-by-one loop

``--batch-vs-loop`` times, for the projection (n_primary = 1) and MGDA (n_primary = k), one
batched call against a loop of single-problem calls of the same function and a loop of
quadprog solves, interleaved round by round (batch, loop, quadprog, batch, ...), on the CPU;
loops run on min(B, --loop-problems) problems and are reported per problem. The table gives the
medians over rounds of the per-problem times and of the per-round ratios.
Results: benchmarks/out/solvers_batch_vs_loop.{json,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from taskgrad.solvers import min_norm_simplex, primary_aux, primary_aux_kkt_residual


def make_grams(k: int, B: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """B Gram matrices of k conflicting gradients in dimension P = k + 16 (some nearly parallel)."""
    g = torch.Generator().manual_seed(seed)
    P = k + 16
    out = torch.empty(B, k, k, dtype=torch.float64)
    chunk = max(1, 2**22 // (k * P))
    for s in range(0, B, chunk):
        b = min(chunk, B - s)
        J = torch.randn(b, k, P, generator=g, dtype=torch.float64)
        J[:, 1:] -= 1.2 * J[:, :1] * torch.rand(b, k - 1, 1, generator=g, dtype=torch.float64)
        J *= torch.logspace(-3, 3, k, dtype=torch.float64)[torch.randperm(k, generator=g)][
            None, :, None
        ]
        out[s : s + b] = J @ J.mT
    out = 0.5 * (out + out.mT)
    return out.to(dtype=dtype, device=device)


def timed(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def quadprog_weights(G: np.ndarray) -> np.ndarray:
    import quadprog

    k = G.shape[0]
    Q = G[1:, 1:]
    c = G[1:, 0]
    s = np.sqrt(np.maximum(np.diag(Q), 1e-300))
    Qs = Q / s[:, None] / s[None, :] + 1e-12 * np.eye(k - 1)  # quadprog needs PD
    lam = quadprog.solve_qp(Qs, -c / s, np.eye(k - 1), np.zeros(k - 1))[0] / s
    return np.concatenate([[1.0], np.maximum(lam, 0)])


def quadprog_mgda(G: np.ndarray) -> np.ndarray:
    """MGDA's α by quadprog: min ½αᵀGα over the simplex (normalized variables, a 1e-12 ridge)."""
    import quadprog

    k = G.shape[0]
    s = np.sqrt(np.maximum(np.diag(G), 1e-300))
    Gs = G / s[:, None] / s[None, :] + 1e-12 * np.eye(k)
    A = np.concatenate([(1.0 / s)[:, None], np.eye(k)], axis=1)  # Σ zᵢ/σᵢ = 1, z ≥ 0
    b = np.concatenate([[1.0], np.zeros(k)])
    z = quadprog.solve_qp(Gs, np.zeros(k), A, b, meq=1)[0]
    a = np.maximum(z, 0) / s
    return a / a.sum()


def batch_vs_loop(args) -> None:
    """Batched call vs a loop of our own single-problem calls vs a loop of quadprog (CPU)."""
    from rich.console import Console
    from rich.table import Table

    rows = []
    for k in args.ks:
        for B in args.batches:
            G = make_grams(k, B, torch.float64, "cpu", seed=k + B)
            nl = min(B, args.loop_problems)
            Gl = [G[i] for i in range(nl)]
            Gn = [g.numpy() for g in Gl]
            for problem, ours, peer in (
                ("projection", lambda X: primary_aux(X), quadprog_weights),
                ("mgda", lambda X: min_norm_simplex(X), quadprog_mgda),
            ):
                ours(G[:2])
                ours(Gl[0])  # warm-up (and compile)
                t_batch, t_loop, t_qp, r_loop, r_qp = [], [], [], [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    ours(G)
                    tb = (time.perf_counter() - t) / B
                    t = time.perf_counter()
                    for g in Gl:
                        ours(g)
                    tl = (time.perf_counter() - t) / nl
                    t = time.perf_counter()
                    for g in Gn:
                        peer(g)
                    tq = (time.perf_counter() - t) / nl
                    t_batch.append(tb)
                    t_loop.append(tl)
                    t_qp.append(tq)
                    r_loop.append(tl / tb)
                    r_qp.append(tq / tb)
                w = ours(G)
                n = 1 if problem == "projection" else k
                rows.append(
                    {
                        "problem": problem,
                        "k": k,
                        "batch": B,
                        "loop_problems": nl,
                        "rounds": args.rounds,
                        "batch_us_per_problem": 1e6 * statistics.median(t_batch),
                        "loop_us_per_problem": 1e6 * statistics.median(t_loop),
                        "quadprog_us_per_problem": 1e6 * statistics.median(t_qp),
                        "loop_over_batch": statistics.median(r_loop),
                        "quadprog_over_batch": statistics.median(r_qp),
                        "kkt_max": float(primary_aux_kkt_residual(w, G, n).max()),
                    }
                )
                print(rows[-1], flush=True)
            del G
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "solvers_batch_vs_loop"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    table = Table(title="CPU float64: µs per problem (medians over interleaved rounds)")
    for col in [
        "problem",
        "k",
        "B",
        "batch",
        "our loop",
        "quadprog loop",
        "loop/batch",
        "quadprog/batch",
        "KKT",
    ]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["problem"],
            str(r["k"]),
            str(r["batch"]),
            f"{r['batch_us_per_problem']:.1f}",
            f"{r['loop_us_per_problem']:.1f}",
            f"{r['quadprog_us_per_problem']:.1f}",
            f"{r['loop_over_batch']:.2f}x",
            f"{r['quadprog_over_batch']:.2f}x",
            f"{r['kkt_max']:.1e}",
        )
    Console(width=150).print(table)
    print(f"saved {stem}.json and {stem}.csv")


def torchjd_projector():
    try:
        from torchjd._linalg import QuadprogProjector
        from torchjd.linalg import PSDMatrix  # noqa: F401
    except Exception:  # pragma: no cover - optional peer
        return None
    return QuadprogProjector()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 8, 32, 128, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="float64 float32 (default: float64 on cpu, both on cuda)",
    )
    ap.add_argument("--peer-problems", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--full", action="store_true", help="include k=512 with B=1024 on the CPU (~10 GB)"
    )
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument(
        "--batch-vs-loop", action="store_true", help="batched call vs one-by-one loops (CPU)"
    )
    ap.add_argument("--loop-problems", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.batch_vs_loop:
        if args.ks == [2, 8, 32, 128, 512]:
            args.ks = [8, 32, 128]
        if args.batches == [1, 64, 1024]:
            args.batches = [64, 1024]
        batch_vs_loop(args)
        return
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    dtypes = args.dtypes or (["float64", "float32"] if dev.startswith("cuda") else ["float64"])
    proj = torchjd_projector()
    rows = []
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    grid = [(k, B, dt) for dt in dtypes for k in args.ks for B in args.batches]
    for k, B, dt in track(grid, description="solving"):
        if dev == "cpu" and k >= 512 and B >= 1024 and not args.full:
            continue
        dtype = getattr(torch, dt)
        G = make_grams(k, B, dtype, dev)
        primary_aux(G)  # warm-up
        reps = args.repeats if k * k * B < 2**24 else 1
        t_ours = timed(lambda G=G: primary_aux(G), reps, sync)
        w, info = primary_aux(G, return_info=True)
        kkt_ours = float(primary_aux_kkt_residual(w, G).max())
        row = {
            "device": dev,
            "dtype": dt,
            "k": k,
            "batch": B,
            "taskgrad_ms": 1e3 * t_ours,
            "taskgrad_kkt": kkt_ours,
            "taskgrad_max_iters": int(info.iterations.max()),
        }
        n_peer = min(B, args.peer_problems)
        Gn = G[:n_peer].double().cpu().numpy()
        if k >= 2:
            t = time.perf_counter()
            wq = np.stack([quadprog_weights(Gn[i]) for i in range(n_peer)])
            row["quadprog_ms"] = 1e3 * (time.perf_counter() - t) * B / n_peer
            row["quadprog_kkt"] = float(
                primary_aux_kkt_residual(torch.from_numpy(wq), G[:n_peer].double().cpu()).max()
            )
        if proj is not None:
            U = torch.zeros(k, dtype=torch.float64)
            U[0] = 1.0
            try:
                t = time.perf_counter()
                wt = torch.stack([proj(U, torch.from_numpy(Gn[i])) for i in range(n_peer)])
                row["torchjd_ms"] = 1e3 * (time.perf_counter() - t) * B / n_peer
                wt = wt / wt[:, :1]
                row["torchjd_kkt"] = float(
                    primary_aux_kkt_residual(wt, G[:n_peer].double().cpu()).max()
                )
            except Exception as err:  # a failed QP is a result too
                row["torchjd_error"] = str(err)[:80]
        row["peer_extrapolated"] = n_peer < B
        rows.append(row)
        del G
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"solvers_{dev.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    keys = sorted({key for r in rows for key in r})
    with stem.with_suffix(".csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)
    table = Table(title=f"primary_aux solve time (ms) and KKT residual, {dev}")
    for col in [
        "dtype",
        "k",
        "B",
        "taskgrad ms",
        "KKT",
        "iters",
        "quadprog ms",
        "KKT",
        "vs quadprog",
        "TorchJD ms",
        "KKT",
    ]:
        table.add_column(col, justify="right")
    for r in rows:
        mark = "~" if r["peer_extrapolated"] else ""
        q = r.get("quadprog_ms")
        tj = r.get("torchjd_ms")
        table.add_row(
            r["dtype"],
            str(r["k"]),
            str(r["batch"]),
            f"{r['taskgrad_ms']:.3f}",
            f"{r['taskgrad_kkt']:.1e}",
            str(r["taskgrad_max_iters"]),
            f"{mark}{q:.3f}" if q is not None else "-",
            f"{r['quadprog_kkt']:.1e}" if q is not None else "-",
            f"{q / r['taskgrad_ms']:.2f}x" if q is not None else "-",
            f"{mark}{tj:.3f}" if tj is not None else r.get("torchjd_error", "-"),
            f"{r['torchjd_kkt']:.1e}" if tj is not None else "-",
        )
    Console(width=170).print(table)
    print(f"saved {stem}.json and {stem}.csv")


if __name__ == "__main__":
    main()
