"""The foundation demo: two conflicting quadratic tasks in 2-D.

The primary loss L0 and the auxiliary loss L1 are convex quadratics with different minima and
curvatures, started where their gradients conflict. Three updates are compared, each through
`taskgrad.backward` on a 2-D parameter:

* primary only (w = (1, 0)): follows g0 and ignores the auxiliary;
* Mean (w = (½, ½)): the summed loss, which raises L1 whenever ⟨g0, g1⟩ < −‖g1‖²;
* PrimaryAux: the update closest to g0 with ⟨u, g1⟩ ≥ 0, so L1 never increases to first order
  (a finite step can still raise it by at most ½η²·uᵀ∇²L1·u, second order);
* PrimaryAux with a robust margin cos(u, g1) ≥ 0.1, which also absorbs that second-order drift.

Writes a plot (trajectories over the contours, and L1 against steps) and a JSON summary.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .methods import Weighting
from .methods.auxiliary.primary_aux import PrimaryAux
from .methods.auxiliary.primary_only import PrimaryOnly
from .methods.loss.mean import Mean
from .training import backward

A0 = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
A1 = torch.tensor([[3.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
M0 = torch.tensor([2.0, 1.0], dtype=torch.float64)
M1 = torch.tensor([-1.5, -0.5], dtype=torch.float64)
START = torch.tensor([-1.0, 0.3], dtype=torch.float64)  # near the auxiliary minimum


def quadratic(A: torch.Tensor, m: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """L(θ) = ½ (θ − m)ᵀ A (θ − m)."""
    return lambda th: 0.5 * (th - m) @ A @ (th - m)


L0 = quadratic(A0, M0)
L1 = quadratic(A1, M1)


def run(method: Weighting, steps: int = 60, lr: float = 0.05) -> dict[str, list]:
    """Plain SGD on θ with the method's weights; records θ, both losses and ⟨g1, u⟩."""
    theta = torch.nn.Parameter(START.clone())
    opt = torch.optim.SGD([theta], lr=lr)
    out: dict[str, list] = {"theta": [], "L0": [], "L1": [], "first_order_dL1": []}
    for _ in range(steps + 1):
        opt.zero_grad()
        losses = [L0(theta), L1(theta)]
        out["theta"].append(theta.detach().tolist())
        out["L0"].append(float(losses[0].detach()))
        out["L1"].append(float(losses[1].detach()))
        g1 = torch.autograd.grad(losses[1], theta, retain_graph=True)[0]
        backward(losses, params=[theta], method=method)
        # d/dt L1 along θ ← θ − η u is −η⟨g1, u⟩ (non-positive means L1 does not rise)
        assert theta.grad is not None  # set by the backward above
        out["first_order_dL1"].append(float(-lr * (g1 @ theta.grad)))
        opt.step()
    return out


def figure(runs: dict[str, dict[str, list]]) -> Any:
    """Trajectories over the contours of L0 and L1, and L1 against steps (log scale, plain
    numbers).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6))
    xs = torch.linspace(-2.5, 3.0, 200, dtype=torch.float64)
    ys = torch.linspace(-1.5, 2.5, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    P = torch.stack([X, Y], -1)
    Z0 = 0.5 * torch.einsum("...i,ij,...j->...", P - M0, A0, P - M0)
    Z1 = 0.5 * torch.einsum("...i,ij,...j->...", P - M1, A1, P - M1)
    ax.contour(X, Y, Z0, levels=12, colors="tab:blue", alpha=0.35, linewidths=0.8)
    ax.contour(X, Y, Z1, levels=12, colors="tab:red", alpha=0.35, linewidths=0.8)
    colors = {
        "primary only": "tab:gray",
        "Mean": "tab:orange",
        "PrimaryAux": "tab:green",
        "PrimaryAux, margin 0.1": "tab:purple",
    }
    for name, r in runs.items():
        th = torch.tensor(r["theta"])
        ax.plot(th[:, 0], th[:, 1], ".-", ms=3, color=colors[name], label=name)
        bx.plot(r["L1"], color=colors[name], label=name)
    ax.plot(*M0.tolist(), "b*", ms=12, label="primary minimum")
    ax.plot(*M1.tolist(), "r*", ms=12, label="auxiliary minimum")
    ax.set_title("trajectories (blue: primary L0, red: auxiliary L1)")
    ax.legend(fontsize=8, loc="lower right")
    bx.set_title("auxiliary loss L1 during training")
    bx.set_xlabel("step")
    bx.set_ylabel("L1 (log scale)")
    bx.set_yscale("log")
    from matplotlib.ticker import LogFormatter

    bx.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # 2.6, not 2.6×10⁰
    bx.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(
    out_dir: str | Path = "taskgrad-demo", steps: int = 60, lr: float = 0.05, show: bool = True
) -> dict:
    """Run the three methods, save ``toy2d.png`` and ``toy2d.json`` in ``out_dir``, return the
    summary.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods: dict[str, Weighting] = {
        "primary only": PrimaryOnly(),
        "Mean": Mean(),
        "PrimaryAux": PrimaryAux(),
        "PrimaryAux, margin 0.1": PrimaryAux(margin=0.1, relative_margin=True),
    }
    runs = {name: run(m, steps, lr) for name, m in methods.items()}
    summary = {}
    for name, r in runs.items():
        rises = [b - a for a, b in itertools.pairwise(r["L1"])]
        summary[name] = {
            "final_L0": r["L0"][-1],
            "final_L1": r["L1"][-1],
            "L1_change": r["L1"][-1] - r["L1"][0],
            "largest_L1_rise_in_a_step": max(rises),
            "largest_first_order_L1_rise": max(r["first_order_dL1"]),
        }
    fig = figure(runs)
    fig.savefig(out / "toy2d.png", dpi=120)
    plt.close(fig)
    (out / "toy2d.json").write_text(
        json.dumps({"lr": lr, "steps": steps, "summary": summary, "runs": runs}, indent=1)
    )
    if show:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Two conflicting quadratics, SGD lr={lr}, {steps} steps")
        for col in [
            "method",
            "final L0",
            "L1 change",
            "largest 1st-order L1 rise",
            "largest L1 rise in a step",
        ]:
            table.add_column(col, justify="right")
        for name, s in summary.items():
            table.add_row(
                name,
                f"{s['final_L0']:.4f}",
                f"{s['L1_change']:+.4f}",
                f"{s['largest_first_order_L1_rise']:+.2e}",
                f"{s['largest_L1_rise_in_a_step']:+.2e}",
            )
        console = Console()
        console.print(table)
        console.print(
            f"plot: {out.resolve() / 'toy2d.png'}\nnumbers: {out.resolve() / 'toy2d.json'}"
        )
    return summary
