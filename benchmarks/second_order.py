"""Second-order steps on multi-task objectives: product cost and optimizer comparisons.

Parts (run one or ``all``):

* ``hvp-cost``: the wall time of one Hessian-vector product relative to one gradient of the
  weighted objective on the ResNet-18-style encoder with two heads (taskgrad.models), for
  forward-over-reverse (torch.func, from scratch and vmapped over 4 vectors), double backward
  (from scratch, and the marginal product once the gradient graph exists, as inside CG), and the
  Gauss-Newton product on the graph. BatchNorm is swapped for batch statistics without running
  buffers (torch.func.replace_all_batch_norm_modules_), which torch.func needs.
* ``synthetic``: two modalities (8×8 images and 16 tabular features on scales 1e-3…1e3), two
  regression tasks (task 0 primary), a small two-branch network; full batch.
* ``school``: the School data (139 schools = tasks, MALSAR layout), a shared 2-layer tanh MLP with
  one linear head per school; the largest school is the primary task for PrimaryAux.

For the last two: Adam, L-BFGS (strong Wolfe), NewtonCG and GaussNewtonCG, each with Mean and
PrimaryAux weights, run for a fixed wall-time budget; the full-batch task losses are logged after
each step (evaluation time excluded). Results: JSON + PNG under --out, a Markdown table printed
and written to --out/summary.md.

    python benchmarks/second_order.py all                      # CPU, small sizes (~6 min)
    python benchmarks/second_order.py hvp-cost --device cuda --width 64 --batch 128
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from taskgrad import Mean, PrimaryAux
from taskgrad.second_order import GaussNewtonCG, GaussNewtonOperator, NewtonCG
from taskgrad.sources import parameter_gram

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
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


# ----------------------------------------------------------------------------------- hvp-cost
def hvp_cost(args: argparse.Namespace) -> dict[str, Any]:
    from taskgrad.models import MultiHead, resnet18_encoder

    device = torch.device(args.device)
    torch.manual_seed(0)
    enc = resnet18_encoder(width=args.width)
    model = MultiHead(enc, enc.feature_dim, n_tasks=2).to(device)
    torch.func.replace_all_batch_norm_modules_(model)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randn(args.batch, 2, device=device)
    w = torch.tensor([0.5, 0.5], device=device)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    detached = tuple(p.detach() for p in params)
    v = tuple(torch.randn_like(p) for p in params)
    V4 = tuple(torch.randn(4, *p.shape, device=device) for p in params)

    def losses_of(outs: list[Tensor]) -> Tensor:
        return torch.stack([((o.squeeze(-1) - y[:, i]) ** 2).mean() for i, o in enumerate(outs)])

    def f_graph() -> tuple[Tensor, list[Tensor]]:
        _, outs = model(x)
        return (w * losses_of(outs)).sum(), outs

    def f_func(p: tuple[Tensor, ...]) -> Tensor:
        _, outs = torch.func.functional_call(model, dict(zip(names, p, strict=True)), (x,))
        return (w * losses_of(outs)).sum()

    def grad_once() -> Any:
        return torch.autograd.grad(f_graph()[0], params)

    gradf = torch.func.grad(f_func)

    def hvp_forward() -> Any:
        return torch.func.jvp(gradf, (detached,), (v,))[1]

    def hvp_forward_vmap4() -> Any:
        return torch.func.vmap(lambda t: torch.func.jvp(gradf, (detached,), (t,))[1])(V4)

    def hvp_double() -> Any:
        g = torch.autograd.grad(f_graph()[0], params, create_graph=True)
        return torch.autograd.grad(g, params, v)

    f0, _ = f_graph()
    g_graph = torch.autograd.grad(f0, params, create_graph=True)

    def hvp_reverse_marginal() -> Any:
        return torch.autograd.grad(g_graph, params, v, retain_graph=True)

    fz, outs = f_graph()
    gn = GaussNewtonOperator.from_graph(losses_of(outs), outs, params, w)
    vflat = torch.cat([t.reshape(-1) for t in v])

    def gnvp_marginal() -> Any:
        return gn.mv(vflat)

    rows: dict[str, float] = {}
    cases = [
        ("gradient (forward + backward)", grad_once, 1),
        ("HVP forward-over-reverse (torch.func jvp∘grad)", hvp_forward, 1),
        ("HVP forward-over-reverse, vmap over 4 vectors (per vector)", hvp_forward_vmap4, 4),
        ("HVP double backward (create_graph + backward)", hvp_double, 1),
        (
            "HVP double backward, marginal (gradient graph reused, as in CG)",
            hvp_reverse_marginal,
            1,
        ),
        ("GNVP on the graph, marginal (double-vjp J v, Hz, Jᵀ)", gnvp_marginal, 1),
    ]
    for name, fn, per in cases:
        rows[name] = median_time(fn, device, args.reps) / per
        print(f"  {name}: {rows[name] * 1e3:.1f} ms", flush=True)
    base = rows["gradient (forward + backward)"]
    res = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "threads": torch.get_num_threads(),
        "width": args.width,
        "batch": args.batch,
        "params": P,
        "reps": args.reps,
        "seconds": rows,
        "ratio_to_gradient": {k: t / base for k, t in rows.items()},
    }
    return res


# ------------------------------------------------------------------------------- experiments
class TwoModalityNet(nn.Module):
    """Image branch (conv) + tabular branch (linear), concatenated, a tanh trunk, k linear heads."""

    def __init__(self, n_tab: int, k: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 16, 16),
        )
        self.tab = nn.Linear(n_tab, 16)
        self.trunk = nn.Sequential(nn.Tanh(), nn.Linear(32, hidden), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(k))

    def forward(self, img: Tensor, tab: Tensor) -> list[Tensor]:
        h = self.trunk(torch.cat([self.img(img), self.tab(tab)], dim=1))
        return [head(h).squeeze(-1) for head in self.heads]


def synthetic_data(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 4, generator=g, dtype=torch.float64)
    basis = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    img = torch.einsum("nk,kchw->nchw", torch.tanh(u), basis) + 0.1 * torch.randn(
        n, 1, 8, 8, generator=g, dtype=torch.float64
    )
    scales = torch.logspace(-3, 3, 16, dtype=torch.float64)
    A = torch.randn(4, 16, generator=g, dtype=torch.float64)
    tab = (u @ A + 0.1 * torch.randn(n, 16, generator=g, dtype=torch.float64)) * scales
    y0 = (
        torch.sin(u[:, 0])
        + u[:, 1] * u[:, 2]
        + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    )
    y1 = torch.tanh(u[:, 0] + u[:, 3]) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return {"img": img, "tab": tab, "y": torch.stack([y0, y1], 1)}


def school_data(path: Path, seed: int) -> dict[str, Any]:
    try:  # a loader from another engineer, when present
        from taskgrad.datasets.tabular import load_school  # type: ignore[import-not-found]

        data = load_school(path)
        Xs = [x for x, _ in data.tasks]
        Ys = [np.asarray(y, dtype=np.float64).ravel() for _, y in data.tasks]
    except ImportError:
        import scipy.io as sio

        mat = sio.loadmat(str(path))
        Xs = [np.asarray(x, dtype=np.float64) for x in mat["X"].ravel()]
        Ys = [np.asarray(y, dtype=np.float64).ravel() for y in mat["Y"].ravel()]
    rng = np.random.default_rng(seed)
    ymean = np.concatenate(Ys).mean()
    ystd = np.concatenate(Ys).std()
    train, test = [], []
    for X, Y in zip(Xs, Ys, strict=True):
        idx = rng.permutation(len(Y))
        cut = max(1, int(0.8 * len(Y)))
        for part, sel in ((train, idx[:cut]), (test, idx[cut:])):
            part.append((torch.tensor(X[sel]), torch.tensor((Y[sel] - ymean) / ystd)))
    return {"train": train, "test": test, "k": len(Xs)}


class SchoolNet(nn.Module):
    """Shared tanh MLP 28→32→32 and one linear head per school; forward(X list) -> outputs list."""

    def __init__(self, d: int, k: int, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head_w = nn.Parameter(torch.randn(k, hidden) / math.sqrt(hidden))
        self.head_b = nn.Parameter(torch.zeros(k))

    def forward(self, X: Tensor, task: Tensor) -> Tensor:
        h = self.trunk(X)
        return (h * self.head_w[task]).sum(-1) + self.head_b[task]


class Problem:
    """A model, a full-batch closure returning {'losses', 'outputs'}, and a test-loss function."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        closure: Callable[[], dict],
        test: Callable[[], Tensor],
        primary: int,
        shared: list[Tensor],
        gram_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.name, self.model, self.closure, self.test, self.primary = (
            name,
            model,
            closure,
            test,
            primary,
        )
        self.shared = shared  # the parameters every task reads: the Gram is taken over these
        self.gram_fn = gram_fn  # an exact, cheaper Gram than parameter_gram's k backwards (School)

    def gram(self, L: Tensor) -> Tensor:
        return self.gram_fn(L) if self.gram_fn is not None else parameter_gram(L, self.shared)


def make_synthetic(seed: int) -> Problem:
    torch.manual_seed(seed)
    tr, te = synthetic_data(512, seed), synthetic_data(512, seed + 1000)
    model = TwoModalityNet(n_tab=16).double()

    def losses(d: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        outs = model(d["img"], d["tab"])
        return torch.stack([((o - d["y"][:, i]) ** 2).mean() for i, o in enumerate(outs)]), outs

    def closure() -> dict:
        L, outs = losses(tr)
        return {"losses": L, "outputs": outs}

    def test() -> Tensor:
        with torch.no_grad():
            return losses(te)[0]

    shared = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
    return Problem("synthetic", model, closure, test, primary=0, shared=shared)


def make_school(seed: int, path: Path) -> Problem:
    torch.manual_seed(seed)
    data = school_data(path, seed)
    k = data["k"]

    def pack(part: list) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        X = torch.cat([x for x, _ in part])
        Y = torch.cat([y for _, y in part])
        task = torch.cat(
            [torch.full((len(y),), i, dtype=torch.long) for i, (_, y) in enumerate(part)]
        )
        counts = torch.tensor([len(y) for _, y in part], dtype=torch.float64)
        return X, Y, task, counts

    Xtr, Ytr, Ttr, Ctr = pack(data["train"])
    Xte, Yte, Tte, Cte = pack(data["test"])
    model = SchoolNet(Xtr.shape[1], k).double()

    def losses(X: Tensor, Y: Tensor, T: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        out = model(X, T)
        per = torch.zeros(k, dtype=out.dtype).index_add(0, T, (out - Y) ** 2) / C.clamp_min(1)
        return per, out

    def closure() -> dict:
        L, out = losses(Xtr, Ytr, Ttr, Ctr)
        return {"losses": L, "outputs": [out]}

    def test() -> Tensor:
        with torch.no_grad():
            return losses(Xte, Yte, Tte, Cte)[0]

    counts = Ctr[Ttr]

    def gram_fn(L: Tensor) -> Tensor:
        """G = J Jᵀ over the trunk with J_t = Σ_{i ∈ school t} ∇ℓᵢ, from per-sample gradients of the
        linear layers (∇_W ℓᵢ = δᵢ aᵢᵀ, δᵢ = ∂ℓᵢ/∂zᵢ from one backward, summed per school): the
        same matrix as taskgrad.sources.parameter_gram (max rel. diff ~1e-15, checked when this
        benchmark was written) for one backward instead of k = 139 full-batch backwards."""
        with torch.enable_grad():
            a: Tensor = Xtr
            inputs, pre = [], []
            for layer in model.trunk:
                if isinstance(layer, nn.Linear):
                    inputs.append(a)
                    a = layer(a)
                    pre.append(a)
                else:
                    a = layer(a)
            out = (a * model.head_w[Ttr]).sum(-1) + model.head_b[Ttr]
            deltas = torch.autograd.grad((((out - Ytr) ** 2) / counts).sum(), pre)
        parts = []
        for a_in, d in zip(inputs, deltas, strict=True):
            a_in, d = a_in.detach(), d.detach()
            Wg = torch.zeros(k, d.shape[1], a_in.shape[1], dtype=d.dtype).index_add_(
                0, Ttr, d[:, :, None] * a_in[:, None, :]
            )
            parts += [
                Wg.reshape(k, -1),
                torch.zeros(k, d.shape[1], dtype=d.dtype).index_add_(0, Ttr, d),
            ]
        J = torch.cat(parts, 1)
        return J @ J.T

    return Problem(
        "school",
        model,
        closure,
        test,
        primary=int(torch.argmax(Ctr)),
        shared=list(model.trunk.parameters()),
        gram_fn=gram_fn,
    )


def reorder_primary(prob: Problem) -> Problem:
    """PrimaryAux treats task 0 as primary: permute the losses so the primary comes first."""
    k_perm = None
    base_closure, base_test = prob.closure, prob.test

    def perm(L: Tensor) -> Tensor:
        nonlocal k_perm
        if k_perm is None:
            k = L.shape[0]
            k_perm = torch.tensor([prob.primary] + [i for i in range(k) if i != prob.primary])
        return L[k_perm]

    def closure() -> dict:
        out = base_closure()
        return {"losses": perm(out["losses"]), "outputs": out["outputs"]}

    def gram_fn(L: Tensor) -> Tensor:
        G = prob.gram(L)  # L is already permuted; prob's gram is in the original task order
        p = k_perm if k_perm is not None else torch.arange(L.shape[0])
        return G[p][:, p]

    gf = gram_fn if prob.gram_fn is not None else None
    return Problem(
        prob.name,
        prob.model,
        closure,
        lambda: perm(base_test()),
        primary=0,
        shared=prob.shared,
        gram_fn=gf,
    )


def run_one(
    prob: Problem,
    opt_name: str,
    method_name: str,
    budget: float,
    max_iters: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    model = prob.model
    method = Mean() if method_name == "Mean" else PrimaryAux(n_primary=1)
    params = list(model.parameters())
    log: list[dict[str, Any]] = []
    info_log: list[dict[str, Any]] = []

    def losses_only() -> Tensor:
        return prob.closure()["losses"]

    def weighted_backward(L: Tensor) -> Tensor:
        """As taskgrad.backward(L, params=shared, method=method), with the problem's Gram source."""
        G = prob.gram(L) if "gram" in method.needs else None
        w = method(gram=G, losses=L.detach()).detach().to(L.dtype)
        (w * L).sum().backward()
        return w

    if opt_name == "Adam":
        opt = torch.optim.Adam(params, lr=args.adam_lr)

        def step() -> None:
            opt.zero_grad()
            weighted_backward(losses_only())
            opt.step()

    elif opt_name == "L-BFGS":
        opt = torch.optim.LBFGS(
            params, lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            opt.zero_grad()
            L = losses_only()
            w = weighted_backward(L)
            return (w * L.detach()).sum()

        def step() -> None:
            opt.step(closure)

    else:
        cls = NewtonCG if opt_name == "NewtonCG" else GaussNewtonCG
        opt = cls(
            params, method, damping=args.damping, max_cg_iters=args.max_cg, cg_rtol=args.cg_rtol,
            module=model, products=args.products, gram_params=prob.shared, gram_fn=prob.gram_fn,
        )  # fmt: skip

        def step() -> None:
            opt.step(prob.closure)
            keep = (
                "cg_iterations",
                "cg_status",
                "damping",
                "step_size",
                "rho",
                "fallback",
                "products",
                "line_search_evals",
            )
            info_log.append({k: opt.info.get(k) for k in keep})

    def record(it: int, wall: float) -> None:
        with torch.no_grad():
            L = losses_only().detach()
        Lte = prob.test()
        log.append({"iter": it, "time": wall, "train": L.tolist() if L.numel() <= 4 else None,
                    "train_primary": float(L[0]), "train_mean": float(L.mean()),
                    "test_primary": float(Lte[0]), "test_mean": float(Lte.mean())})  # fmt: skip

    wall = 0.0
    record(0, 0.0)
    it = 0
    while wall < budget and it < max_iters:
        t0 = time.perf_counter()
        try:
            step()
        except (FloatingPointError, RuntimeError) as err:  # report, never hide
            log[-1]["error"] = f"{type(err).__name__}: {str(err)[:160]}"
            break
        wall += time.perf_counter() - t0
        it += 1
        record(it, wall)
        if not math.isfinite(log[-1]["train_mean"]):
            log[-1]["error"] = "non-finite loss"
            break
    summary: dict[str, Any] = {
        "optimizer": opt_name,
        "method": method_name,
        "iters": it,
        "time": wall,
        "log": log,
    }
    if info_log:
        cg = [r["cg_iterations"] for r in info_log if r.get("cg_iterations") is not None]
        summary["mean_cg_iters"] = float(np.mean(cg)) if cg else None
        summary["fallbacks"] = sum(r["fallback"] is not None for r in info_log)
        summary["products"] = info_log[-1].get("products")
        summary["info"] = info_log
    return summary


def experiment(
    name: str, make: Callable[[], Problem], args: argparse.Namespace, budget: float
) -> dict[str, Any]:
    from rich.progress import Progress

    runs = []
    combos = [
        (o, m)
        for o in ("Adam", "L-BFGS", "NewtonCG", "GaussNewtonCG")
        for m in ("Mean", "PrimaryAux")
    ]
    with Progress(transient=False) as bar:
        task = bar.add_task(f"{name}", total=len(combos))
        for opt_name, method_name in combos:
            prob = reorder_primary(make())  # identical initialisation for every run
            bar.update(task, description=f"{name}: {opt_name}+{method_name}")
            runs.append(run_one(prob, opt_name, method_name, budget, args.max_iters, args))
            bar.advance(task)
    return {"problem": name, "budget_s": budget, "runs": runs}


def plot(exp: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = {"Adam": "C0", "L-BFGS": "C1", "NewtonCG": "C2", "GaussNewtonCG": "C3"}
    for r in exp["runs"]:
        style = "-" if r["method"] == "Mean" else "--"
        label = f"{r['optimizer']} + {r['method']}"
        it = [e["iter"] for e in r["log"]]
        t = [max(e["time"], 1e-3) for e in r["log"]]
        for row, key in enumerate(("train_mean", "train_primary")):
            y = [e[key] for e in r["log"]]
            axes[row, 0].plot(it, y, style, color=colors[r["optimizer"]], label=label)
            axes[row, 1].plot(t, y, style, color=colors[r["optimizer"]], label=label)
    for row, key in enumerate(("mean task loss (train)", "primary task loss (train)")):
        for col, xl in enumerate(("iteration", "wall time [s]")):
            ax = axes[row, col]
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel(key)
            if col == 0:
                ax.set_xscale("symlog", linthresh=10)
                ax.set_xlim(left=0)
            else:
                ax.set_xscale("log")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{exp['problem']}: full batch, {exp['budget_s']:.0f} s per run")
    fig.tight_layout()
    path = out / f"second_order_{exp['problem']}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(exp: dict[str, Any]) -> str:
    lines = [
        f"**{exp['problem']}** (budget {exp['budget_s']:.0f} s per run; losses are full-batch MSE, "
        "primary = task 0 after reordering)",
        "",
        "| optimizer | weights | iters | time [s] | train mean | train primary | test primary | t "
        "to 1.1× best train mean [s] | mean CG iters | fallbacks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = min(
        min(e["train_mean"] for e in r["log"] if math.isfinite(e["train_mean"]))
        for r in exp["runs"]
    )
    for r in exp["runs"]:
        last = r["log"][-1]
        hit = next((e["time"] for e in r["log"] if e["train_mean"] <= 1.1 * best), None)
        cg = "" if r.get("mean_cg_iters") is None else f"{r['mean_cg_iters']:.1f}"
        lines.append(
            f"| {r['optimizer']} | {r['method']} | {r['iters']} | {r['time']:.1f} | "
            f"{last['train_mean']:.4g} | "
            f"{last['train_primary']:.4g} | {last['test_primary']:.4g} | "
            f"{'—' if hit is None else f'{hit:.2f}'} | "
            f"{cg} | {r.get('fallbacks', '')}"
            + (f" ({last['error']})" if "error" in last else "")
            + " |"
        )
    return "\n".join(lines)


def hvp_table(res: dict[str, Any]) -> str:
    lines = [
        f"**HVP cost** ({res['device_name']}, {res['threads']} thread(s); ResNet-18-style encoder "
        "width "
        f"{res['width']}, batch {res['batch']}×3×32×32, 2 heads, {res['params']:,} parameters; "
        f"median of {res['reps']})",
        "",
        "| product | time [ms] | × gradient |",
        "|---|---:|---:|",
    ]
    for k, t in res["seconds"].items():
        lines.append(f"| {k} | {t * 1e3:.1f} | {res['ratio_to_gradient'][k]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("part", choices=["hvp-cost", "synthetic", "school", "all"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings)")
    ap.add_argument("--width", type=int, default=16, help="ResNet width (64 = ResNet-18)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget", type=float, default=15.0, help="seconds per optimizer run")
    ap.add_argument("--max-iters", type=int, default=5000)
    ap.add_argument("--adam-lr", type=float, default=1e-2)
    ap.add_argument("--damping", type=float, default=1e-2)
    ap.add_argument("--max-cg", type=int, default=50)
    ap.add_argument(
        "--cg-rtol", type=float, default=None, help="CG tolerance (default: min(½, √‖g‖))"
    )
    ap.add_argument("--products", default="auto", choices=["auto", "forward", "reverse"])
    ap.add_argument("--school", type=Path, default=ROOT.parent / "shared" / "data" / "school.mat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "second_order")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    md: list[str] = [
        "command: `python benchmarks/second_order.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
    ]
    if args.part in ("hvp-cost", "all"):
        print("HVP cost:", flush=True)
        res = hvp_cost(args)
        (args.out / f"hvp_cost_{args.device}.json").write_text(json.dumps(res, indent=2))
        md += [hvp_table(res), ""]
    for part, make in (
        ("synthetic", lambda: make_synthetic(args.seed)),
        ("school", lambda: make_school(args.seed, args.school)),
    ):
        if args.part not in (part, "all"):
            continue
        if part == "school" and not args.school.exists():
            print(
                f"School data not found at {args.school}; skipping (pass --school PATH).",
                file=sys.stderr,
            )
            continue
        exp = experiment(part, make, args, args.budget)
        (args.out / f"{part}.json").write_text(json.dumps(exp))
        png = plot(exp, args.out)
        md += [
            table(exp),
            "",
            f"plot: `{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}`",
            "",
        ]
    text = "\n".join(md)
    print(text)
    (args.out / f"summary_{args.part}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
