"""How good is the sketched Gram?  Error of Ĝ = (JΩ)(JΩ)ᵀ/r against the exact G = JJᵀ, and the
effect on the weights and the update direction each method chooses, as r varies.

    python benchmarks/sketch_error.py [--ks 4 16] [--rs 1 2 4 8 16 32 64 128 256] [--draws 20]

Set-up: the MLP trunk of ``benchmarks/methods.py`` (64→256→256→256, ReLU) with one linear head per
task, batch 128, regression tasks whose targets share a latent direction (positively correlated
tasks), with every third target negated (conflicting tasks): G has large off-diagonal entries of
both signs, the regime where the weights matter. The Gram is over the trunk's parameters (the
shared ones); the exact G comes from :func:`taskgrad.sources.parameter_gram`, the sketches from
:func:`taskgrad.sources.sketch.sketch_gram` (real forward-mode JVPs, ``draws`` independent Ω per r).

Reported per (k, r), median over draws:
  * rel. error ‖Ĝ − G‖_F / ‖G‖_F, against the Gaussian-sketch theory
    E‖Ĝ − G‖²_F = ((tr G)² + ‖G‖²_F) / r (each entry has variance (G_ii G_jj + G_ij²)/r);
  * for MGDA, PrimaryAux (task 0 primary), UPGrad and IMTL-G: the relative weight error
    ‖ŵ − w‖/‖w‖, the cosine between the directions d̂ = Jᵀŵ and d = Jᵀw (J the exact Jacobian),
    and the fraction of draws where d̂ conflicts with a task gradient the method protects
    (cos(d̂, g_i) < −1e-6 for an auxiliary i of PrimaryAux, for any i of MGDA/UPGrad; "—" for
    IMTL-G, which protects none), with the median of the worst such cosine in brackets.

Writes benchmarks/out/sketch_error.json and .csv, benchmarks/out/sketch_error.png; prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taskgrad.methods import get as get_method
from taskgrad.sources import parameter_gram
from taskgrad.sources.sketch import sketch_gram

OUT = Path(__file__).parent / "out"
METHODS = {"mgda": {}, "primary-aux": {}, "upgrad": {}, "imtl-g": {}}
PROTECTS_ALL = {"mgda", "upgrad"}  # no conflict with any task; primary-aux: with no auxiliary
PROTECTS = PROTECTS_ALL | {"primary-aux"}


def make_problem(k: int, seed: int = 0, d_in: int = 64, width: int = 256, batch: int = 128):
    """Trunk, heads, inputs and k correlated/conflicting regression targets."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    trunk = nn.Sequential(
        nn.Linear(d_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
    ).double()
    heads = nn.Linear(width, k).double()
    x = torch.randn(batch, d_in, generator=g, dtype=torch.float64)
    shared = x @ torch.randn(d_in, generator=g, dtype=torch.float64)
    own = x @ torch.randn(d_in, k, generator=g, dtype=torch.float64)
    sign = torch.tensor([-1.0 if i % 3 == 2 else 1.0 for i in range(k)], dtype=torch.float64)
    y = sign * (2.0 * shared[:, None] + own)
    return trunk, heads, x, y


def exact(trunk: nn.Module, heads: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The exact Jacobian J (k × P) of the k losses w.r.t. the trunk's parameters, and G = JJᵀ
    from the library's parameter source (checked against JJᵀ)."""
    params = list(trunk.parameters())
    losses = ((heads(trunk(x)) - y) ** 2).mean(0)
    rows = []
    for i in range(losses.shape[0]):
        gs = torch.autograd.grad(losses[i], params, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in gs]))
    J = torch.stack(rows).detach()
    G = parameter_gram(list(losses), params).detach()
    if not torch.allclose(G, J @ J.T, rtol=1e-9, atol=1e-12 * float(G.abs().max())):
        raise AssertionError("parameter_gram disagrees with the explicit JJᵀ")
    return J, G


def sketched(trunk: nn.Module, heads: nn.Module, x: Tensor, y: Tensor, r: int, seed: int) -> Tensor:
    names = dict(trunk.named_parameters())

    def fn(p: dict[str, Tensor]) -> Tensor:
        z = torch.func.functional_call(trunk, p, (x,))
        return ((heads(z) - y) ** 2).mean(0)

    return sketch_gram(fn, names, r, generator=torch.Generator().manual_seed(seed))


def worst_cosine(name: str, d: Tensor, J: Tensor) -> float:
    """min over the gradients the method protects of cos(d, gᵢ): < 0 means d raises that loss."""
    cos = (J @ d) / (J.norm(dim=1) * d.norm()).clamp_min(1e-300)
    return float(cos.min() if name in PROTECTS_ALL else cos[1:].min())


def run(ks: list[int], rs: list[int], draws: int) -> list[dict]:
    from rich.progress import Progress

    rows = []
    with Progress() as bar:
        task = bar.add_task("sketches", total=len(ks) * len(rs) * draws)
        for k in ks:
            trunk, heads, x, y = make_problem(k)
            J, G = exact(trunk, heads, x, y)
            w_ref = {m: get_method(m, **kw)(gram=G) for m, kw in METHODS.items()}
            d_ref = {m: J.T @ w for m, w in w_ref.items()}
            theory_base = math.sqrt(float(torch.trace(G)) ** 2 + float((G * G).sum())) / float(
                G.norm()
            )
            for r in rs:
                stats: dict[str, list[float]] = {"gram": []}
                for draw in range(draws):
                    Gh = sketched(trunk, heads, x, y, r, seed=1000 * r + draw)
                    stats["gram"].append(float((Gh - G).norm() / G.norm()))
                    for m, kw in METHODS.items():
                        w = get_method(m, **kw)(gram=Gh)
                        d = J.T @ w
                        stats.setdefault(f"{m}:w", []).append(
                            float((w - w_ref[m]).norm() / w_ref[m].norm())
                        )
                        cos = float(d @ d_ref[m]) / max(float(d.norm() * d_ref[m].norm()), 1e-300)
                        stats.setdefault(f"{m}:cos", []).append(cos)
                        if m in PROTECTS:
                            stats.setdefault(f"{m}:worst", []).append(worst_cosine(m, d, J))
                    bar.advance(task)
                row = {
                    "k": k,
                    "r": r,
                    "draws": draws,
                    "gram_rel_err": float(np.median(stats["gram"])),
                    "gram_rel_err_theory": theory_base / math.sqrt(r),
                }
                for m in METHODS:
                    row[f"{m}_w_rel_err"] = float(np.median(stats[f"{m}:w"]))
                    row[f"{m}_dir_cos"] = float(np.median(stats[f"{m}:cos"]))
                    if m in PROTECTS:
                        worst = np.array(stats[f"{m}:worst"])
                        row[f"{m}_conflict_frac"] = float(np.mean(worst < -1e-6))
                        row[f"{m}_worst_cos"] = float(np.median(worst))
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| k | r | ‖Ĝ−G‖/‖G‖ | theory | "
        + " | ".join(f"{m} ‖ŵ−w‖/‖w‖ | {m} cos(d̂,d) | {m} conflicts (worst cos)" for m in METHODS)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + 3 * len(METHODS))]
    for r in rows:
        cells = [
            str(r["k"]),
            str(r["r"]),
            f"{r['gram_rel_err']:.3f}",
            f"{r['gram_rel_err_theory']:.3f}",
        ]
        for m in METHODS:
            frac = r.get(f"{m}_conflict_frac")
            worst = "—" if frac is None else f"{100 * frac:.0f}% ({r[f'{m}_worst_cos']:+.3f})"
            cells += [f"{r[f'{m}_w_rel_err']:.3f}", f"{r[f'{m}_dir_cos']:.3f}", worst]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for k in ks:
        rs = [r for r in rows if r["k"] == k]
        x = [r["r"] for r in rs]
        axes[0].loglog(x, [r["gram_rel_err"] for r in rs], "o-", label=f"k={k} measured")
        axes[0].loglog(
            x,
            [r["gram_rel_err_theory"] for r in rs],
            "k--",
            lw=0.8,
            label=f"k={k} theory" if k == ks[0] else None,
        )
        for m in METHODS:
            axes[1].loglog(x, [r[f"{m}_w_rel_err"] for r in rs], "o-", label=f"{m}, k={k}")
            axes[2].semilogx(x, [r[f"{m}_dir_cos"] for r in rs], "o-", label=f"{m}, k={k}")
    axes[0].set(
        xlabel="r (sketch directions)",
        ylabel="‖Ĝ − G‖_F / ‖G‖_F",
        title="Gram error (median over draws)",
    )
    axes[1].set(xlabel="r", ylabel="‖ŵ − w‖ / ‖w‖", title="weight error")
    axes[2].set(xlabel="r", ylabel="cos(Jᵀŵ, Jᵀw)", title="direction agreement")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--rs", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.ks, args.rs, args.draws)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sketch_error.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    with open(OUT / "sketch_error.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, OUT / "sketch_error.png")
    print(table(rows))


if __name__ == "__main__":
    main()
