"""Speed of taskgrad.linear.MultiTaskLasso against scikit-learn (and skglm, celer when installed).

Cases: dense n=500, p=5000, T=20 at α = α_max/20 and on a 10-α path (α_max/1.5 down to
α_max/20, warm-started); the same with a sparse X at 1 % density; with ``--device cuda`` a dense
n = p = 20,000, T = 20 case for the torch solver. Every contender fits the same objective with
an intercept, at the same duality-gap target (scikit-learn's tol = 1e-4 means gap ≤ 1e-4·‖Y−Ȳ‖²_F/n
of the 1/(2n)-scaled objective, which is tol = 2e-4 in taskgrad's units, gap ≤ tol·f(0)); the
final gap of every contender's coefficients is recomputed by one independent formula and reported.

    python benchmarks/linear.py                 # CPU cases
    python benchmarks/linear.py --device cuda   # adds the large GPU case (taskgrad solver='apg')
    python benchmarks/linear.py --quick         # smaller sizes, for a smoke test
    python benchmarks/linear.py --datasets      # School / Parkinsons nMSE (10/20/30 % splits)
    python benchmarks/linear.py --logistic-scaling  # logistic CD on badly scaled vs standardized X
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

OUT = Path(__file__).resolve().parent / "out"


def make_data(n: int, p: int, T: int, density: float | None, seed: int = 0):
    """Y = XW* + noise with 20 shared active features; X dense Gaussian or sparse uniform."""
    rng = np.random.default_rng(seed)
    if density is None:
        X = rng.standard_normal((n, p))
    else:
        X = sp.random(
            n, p, density=density, format="csc", random_state=seed, data_rvs=rng.standard_normal
        )
    W = np.zeros((p, T))
    act = rng.choice(p, 20, replace=False)
    W[act] = rng.standard_normal((20, T))
    Y = np.asarray(X @ W) + 0.5 * rng.standard_normal((n, T))
    return X, Y


def reference_gap(X, Y, coef: np.ndarray, intercept: np.ndarray, alpha: float) -> float:
    """Duality gap of (1/2n)‖Y − XW − 1bᵀ‖² + α‖W‖_{2,1} at W = coefᵀ with the best b."""
    n = Y.shape[0]
    W = coef.T
    R = Y - np.asarray(X @ W)
    R -= R.mean(axis=0)  # optimal intercept for this W
    theta = R / n
    V = np.asarray(X.T @ theta)
    scale = min(1.0, alpha / np.sqrt((V**2).sum(axis=1)).max())
    theta *= scale
    Yc = Y - Y.mean(axis=0)
    primal = (R**2).sum() / (2 * n) + alpha * np.sqrt((W**2).sum(axis=1)).sum()
    dual = (theta * Yc).sum() - n * (theta**2).sum() / 2
    return float(primal - dual)


def alpha_max(X, Y) -> float:
    Yc = Y - Y.mean(axis=0)
    if sp.issparse(X):
        V = np.asarray(X.T @ Yc) - np.outer(np.asarray(X.mean(axis=0)).ravel(), Yc.sum(0))
    else:
        V = (X - X.mean(axis=0)).T @ Yc
    return float(np.sqrt((V**2).sum(axis=1)).max() / X.shape[0])


def contenders(device: str):
    """name → factory(alpha, warm_start) returning an estimator, and whether it takes sparse X."""
    from sklearn.linear_model import MultiTaskLasso as SkMTL

    from taskgrad.linear import MultiTaskLasso

    solver = "cd" if device == "cpu" else "apg"
    out = {
        "taskgrad": (
            lambda a, w: MultiTaskLasso(
                alpha=a, tol=2e-4, max_iter=100000, warm_start=w, solver=solver, device=device
            ),
            True,
        ),
        "scikit-learn": (
            lambda a, w: SkMTL(alpha=a, tol=1e-4, max_iter=100000, warm_start=w),
            False,
        ),
    }
    notes = {}
    try:
        from skglm import MultiTaskLasso as SkglmMTL

        out["skglm"] = (
            lambda a, w: SkglmMTL(
                alpha=a, tol=1e-4, max_iter=100, warm_start=w, fit_intercept=True
            ),
            True,
        )
    except Exception as e:  # pragma: no cover - depends on the environment
        notes["skglm"] = f"not importable: {e!r}"
    try:
        from celer import MultiTaskLasso as CelerMTL

        out["celer"] = (lambda a, w: CelerMTL(alpha=a, tol=1e-4, warm_start=w), False)
    except Exception as e:  # pragma: no cover
        notes["celer"] = f"not importable: {e!r}"
    return out, notes


def run_case(name, X, Y, alphas, ests, progress, task_id):
    """Fit every contender on ``alphas`` (warm-started along a path); time and final gap."""
    rows = []
    for est_name, (factory, takes_sparse) in ests.items():
        Xin = X if (takes_sparse or not sp.issparse(X)) else X.toarray()
        note = "" if Xin is X else "X densified (no sparse support)"
        try:
            est = factory(alphas[0], len(alphas) > 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                for a in alphas:
                    est.set_params(alpha=a)
                    est.fit(Xin, Y)
                elapsed = time.perf_counter() - t0
            gap = reference_gap(X, Y, np.asarray(est.coef_), np.asarray(est.intercept_), alphas[-1])
            rows.append(
                dict(
                    case=name,
                    solver=est_name,
                    time_s=elapsed,
                    final_gap=gap,
                    gap_target=1e-4 * ((Y - Y.mean(0)) ** 2).sum() / Y.shape[0],
                    n_active=int((np.abs(np.asarray(est.coef_)).sum(0) > 0).sum()),
                    note=note,
                )
            )
        except Exception as e:  # a peer that breaks with this scikit-learn/numpy is reported
            rows.append(
                dict(
                    case=name,
                    solver=est_name,
                    time_s=float("nan"),
                    final_gap=float("nan"),
                    gap_target=float("nan"),
                    n_active=-1,
                    note=f"failed: {type(e).__name__}: {str(e)[:120]}",
                )
            )
        progress.advance(task_id)
    return rows


def warmup(device: str) -> None:
    """Compile the numba kernels once so that timings exclude JIT compilation."""
    from taskgrad.linear import MultiTaskLasso

    X, Y = make_data(50, 30, 3, None)
    MultiTaskLasso(alpha=0.01, solver="cd" if device == "cpu" else "apg", device=device).fit(X, Y)
    Xs, Ys = make_data(50, 30, 3, 0.3)
    MultiTaskLasso(alpha=0.01, device="cpu").fit(Xs, Ys)
    try:  # skglm compiles numba kernels on its first fit: keep that out of its timings too
        from skglm import MultiTaskLasso as SkglmMTL

        SkglmMTL(alpha=0.01).fit(X, Y)
        SkglmMTL(alpha=0.01).fit(Xs, Ys)
    except Exception:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="n=200, p=1000 (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for every contender")
    ap.add_argument(
        "--datasets",
        action="store_true",
        help="School and Parkinsons nMSE instead of the speed cases",
    )
    ap.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--logistic-scaling",
        action="store_true",
        help="L2,1 logistic CD epochs/time on badly scaled vs standardized features",
    )
    args = ap.parse_args(argv)
    if args.datasets:
        return run_datasets(args)
    if args.logistic_scaling:
        return run_logistic_scaling(args)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    import torch

    torch.set_num_threads(args.threads)
    n, p, T = (200, 1000, 20) if args.quick else (500, 5000, 20)
    cases = []
    Xd, Yd = make_data(n, p, T, None)
    Xs, Ys = make_data(n, p, T, 0.01)
    for label, X, Y in (("dense", Xd, Yd), ("sparse 1%", Xs, Ys)):
        am = alpha_max(X, Y)
        cases.append((f"{label} n={n} p={p} T={T} α=α_max/20", X, Y, [am / 20]))
        cases.append(
            (
                f"{label} n={n} p={p} T={T} 10-α path",
                X,
                Y,
                list(np.geomspace(am / 1.5, am / 20, 10)),
            )
        )
    if args.device != "cpu":
        nl = 2000 if args.quick else 20000
        Xl, Yl = make_data(nl, nl, T, None)
        cases.append(
            (
                f"dense n={nl} p={nl} T={T} α=α_max/20 ({args.device})",
                Xl,
                Yl,
                [alpha_max(Xl, Yl) / 20],
            )
        )
    ests, notes = contenders("cpu")
    warmup("cpu")
    rows = []
    with Progress() as progress:
        tid = progress.add_task(
            "fits", total=len(cases) * len(ests) + (len(ests) if args.device != "cpu" else 0)
        )
        for name, X, Y, alphas in cases:
            if "(" in name and args.device != "cpu":  # large case: GPU taskgrad vs CPU others
                gpu_ests, _ = contenders(args.device)
                warmup(args.device)
                rows += run_case(name, X, Y, alphas, gpu_ests, progress, tid)
            else:
                rows += run_case(name, X, Y, alphas, ests, progress, tid)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=args.device,
        threads=args.threads,
        numpy=np.__version__,
        notes=notes,
        command="python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    )
    (OUT / "linear.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    table = Table(title="MultiTaskLasso: time (s) and final duality gap")
    for col in (
        "case",
        "solver",
        "time_s",
        "×sklearn",
        "final_gap",
        "gap_target",
        "n_active",
        "note",
    ):
        table.add_column(col)
    base = {r["case"]: r["time_s"] for r in rows if r["solver"] == "scikit-learn"}
    for r in rows:
        ratio = base.get(r["case"], float("nan")) / r["time_s"]
        table.add_row(
            r["case"],
            r["solver"],
            f"{r['time_s']:.3f}",
            f"{ratio:.2f}",
            f"{r['final_gap']:.2e}",
            f"{r['gap_target']:.2e}",
            str(r["n_active"]),
            r["note"],
        )
    Console().print(table)
    for k, v in notes.items():
        print(f"{k}: {v}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(dict.fromkeys(r["case"] for r in rows))
        solvers = list(dict.fromkeys(r["solver"] for r in rows))
        fig, ax = plt.subplots(figsize=(9, 4))
        w = 0.8 / len(solvers)
        for k, s in enumerate(solvers):
            ts = [
                next((r["time_s"] for r in rows if r["case"] == c and r["solver"] == s), np.nan)
                for c in names
            ]
            ax.bar(np.arange(len(names)) + k * w, ts, w, label=s)
        ax.set_xticks(
            np.arange(len(names)) + 0.4 - w / 2,
            [c.split(" T=")[0] + "\n" + c.split("T=20 ")[-1] for c in names],
            fontsize=7,
        )
        ax.set_yscale("log")
        ax.set_ylabel("seconds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "linear.png", dpi=120)
    except Exception as e:  # plotting is optional
        print("plot skipped:", e)
    return 0


# --------------------------------------------------------------------------- logistic scaling
def make_logistic(n: int = 400, p: int = 40, T: int = 4, bad: bool = True, seed: int = 0):
    """T binary tasks from a standardized Gaussian X with 8 shared active features; with ``bad``
    the columns are then multiplied by 10^U(−3, 3) (the labels do not change)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = np.zeros((p, T))
    W[:8] = 1.5 * rng.standard_normal((8, T))
    Y = (X @ W + 0.3 + rng.standard_normal((n, T)) > 0).astype(int)
    return (X * 10.0 ** rng.uniform(-3, 3, p) if bad else X), Y


def run_logistic_scaling(args) -> int:
    """Epochs, time and final gap of MultiTaskLogisticRegression (l21, tol 1e-8) at α = f·α_max
    for standardized and badly scaled columns (each problem's own α_max)."""
    from rich.console import Console
    from rich.table import Table

    from taskgrad.linear import MultiTaskLogisticRegression
    from taskgrad.linear._solver import alpha_max_of

    MultiTaskLogisticRegression(alpha=0.01).fit(*make_logistic(50, 10, 2))  # JIT warm-up
    rows = []
    for bad in (False, True):
        X, Y = make_logistic(bad=bad)
        am = alpha_max_of(MultiTaskLogisticRegression()._data(X, Y, None).problem(True), 0)
        for frac in (1e-1, 2e-2, 1e-3, 1e-4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                m = MultiTaskLogisticRegression(alpha=frac * am, tol=1e-8, max_iter=100000).fit(
                    X, Y
                )
                dt = time.perf_counter() - t0
            rows.append(
                dict(
                    columns="10^U(-3,3) scaled" if bad else "standardized",
                    alpha_frac=frac,
                    epochs=int(m.n_iter_),
                    time_s=dt,
                    gap=float(m.dual_gap_),
                    gap_tol=float(m.dual_gap_tol_),
                    converged=bool(m.converged_),
                    n_active=int((np.abs(m.coef_).sum(0) > 0).sum()),
                )
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "linear_logistic_scaling.json").write_text(json.dumps(rows, indent=1))
    table = Table(title="MultiTaskLogisticRegression (l21), n=400 p=40 T=4, tol=1e-8")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    Console().print(table)
    return 0


# --------------------------------------------------------------------------- real data sets
def nmse(tasks_test, preds) -> float:
    """Normalized MSE: mean squared error over all test samples / variance of the test targets."""
    y = np.concatenate([t[1] for t in tasks_test])
    return float(np.mean((y - np.concatenate(preds)) ** 2) / np.var(y))


def nmse_task_mean(tasks_test, preds) -> float:
    """Task-averaged nMSE: (1/T) Σ_t MSE_t / Var(y_t) over the tasks' test samples (tasks with
    fewer than 2 test samples or constant targets skipped)."""
    vals = [
        np.mean((t[1] - p) ** 2) / np.var(t[1])
        for t, p in zip(tasks_test, preds, strict=True)
        if t[1].size > 1 and np.var(t[1]) > 0
    ]
    return float(np.mean(vals))


def malsar_rmse(tasks_test, preds) -> float:
    """MALSAR's ``eval_MTL_rmse``: Σ_t N_t·RMSE_t / Σ_t N_t (sample-weighted per-task RMSE)."""
    num = sum(
        np.sqrt(np.mean((t[1] - p) ** 2)) * t[1].size
        for t, p in zip(tasks_test, preds, strict=True)
    )
    return float(num / sum(t[1].size for t in tasks_test))


def split_tasks(data, ratio: float, rng):
    """Per task, a random ``ratio`` of the samples (at least 1) for training, the rest for test."""
    train, test = [], []
    for X, y in data.tasks:
        idx = rng.permutation(X.shape[0])
        k = max(1, int(round(ratio * X.shape[0])))
        train.append((X[idx[:k]], y[idx[:k]]))
        test.append((X[idx[k:]], y[idx[k:]]))
    Xtr = np.vstack([x for x, _ in train])
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    f = lambda ts: [((x - mu) / sd, y) for x, y in ts]  # noqa: E731
    return f(train), f(test)


def split_tasks_malsar(data, ratio: float, rng):
    """MALSAR's ``examples/train_and_test/test_script.m`` protocol: every task's X is z-scored
    over all of that task's samples (Matlab ``zscore``: ddof 1, a constant column becomes 0), a
    bias column of ones is appended, then ``mtSplitPerc`` keeps the samples whose position in a
    random permutation 1..n_t is < ratio·n_t for training (⌈ratio·n_t⌉ − 1 of them)."""
    train, test = [], []
    for X, y in data.tasks:
        n = X.shape[0]
        sd = X.std(0, ddof=1) if n > 1 else np.ones(X.shape[1])
        sd[~(sd > 0)] = 1.0
        Xz = np.hstack([(X - X.mean(0)) / sd, np.ones((n, 1))])
        sel = (rng.permutation(n) + 1) < n * ratio
        train.append((Xz[sel], y[sel]))
        test.append((Xz[~sel], y[~sel]))
    return train, test


def run_datasets(args) -> int:
    """School and Parkinsons: L2,1 multi-task Lasso vs per-task Lasso and ridge (α by 3-fold CV)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from taskgrad.datasets.tabular import load_parkinsons, load_school
    from taskgrad.linear import MultiTaskElasticNetCV, MultiTaskLassoCV

    data_dir = Path(args.data_dir)
    sets = {
        "School": load_school(data_dir / "school.mat"),
        "Parkinsons (total_UPDRS)": load_parkinsons(data_dir / "parkinsons_updrs.data"),
    }
    models = {
        "MTL L2,1 (taskgrad)": lambda: MultiTaskLassoCV(alphas=20, cv=3),
        "per-task Lasso": lambda: MultiTaskLassoCV(penalty="l1", alphas=20, cv=3),
        "per-task ridge": lambda: MultiTaskElasticNetCV(l1_ratio=0.0, alphas=20, eps=1e-5, cv=3),
    }
    # protocol "ours": pooled training standardization, per-task intercepts (fit_intercept=True);
    # protocol "MALSAR": per-task z-score + bias column, mtSplitPerc split, no separate intercept
    protocols = {"ours": (split_tasks, True), "MALSAR": (split_tasks_malsar, False)}
    ratios, reps = (0.1, 0.2, 0.3), args.reps
    rows = []
    with Progress() as progress:
        tid = progress.add_task("splits", total=(len(sets) + 1) * len(ratios) * reps)
        for dname, data in sets.items():
            for proto, (splitter, intercept) in protocols.items():
                if proto == "MALSAR" and not dname.startswith("School"):
                    continue
                for ratio in ratios:
                    for rep in range(reps):
                        tr, te = splitter(data, ratio, np.random.default_rng(rep))
                        for mname, make in models.items():
                            est = make().set_params(fit_intercept=intercept)
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                m = est.fit(tr)
                            pred = m.predict([x for x, _ in te])
                            rows.append(
                                dict(
                                    dataset=dname,
                                    protocol=proto,
                                    ratio=ratio,
                                    rep=rep,
                                    model=mname,
                                    nmse=nmse(te, pred),
                                    nmse_task_mean=nmse_task_mean(te, pred),
                                    malsar_rmse=malsar_rmse(te, pred),
                                    alpha=m.alpha_,
                                    n_features=int((np.abs(m.coef_).sum(0) > 0).sum()),
                                )
                            )
                        progress.advance(tid)
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    (OUT / "linear_datasets.json").write_text(json.dumps(dict(command=cmd, rows=rows), indent=1))
    table = Table(
        title=f"test error, mean ± std over {reps} splits (nMSE pooled | nMSE "
        "task-averaged | MALSAR eval_MTL_rmse)"
    )
    for col in ("dataset", "protocol", "model", "metric"):
        table.add_column(col)
    for r in ratios:
        table.add_column(f"{int(r * 100)} % train")
    for dname in sets:
        for proto in protocols:
            for mname in models:
                for metric in ("nmse", "nmse_task_mean", "malsar_rmse"):
                    cells = []
                    for r in ratios:
                        v = [
                            x[metric]
                            for x in rows
                            if x["dataset"] == dname
                            and x["model"] == mname
                            and x["ratio"] == r
                            and x["protocol"] == proto
                        ]
                        cells.append(f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "")
                    if any(cells):
                        table.add_row(dname, proto, mname, metric, *cells)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
