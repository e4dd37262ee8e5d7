"""Auxiliary learning where it can help: a primary task with few labels, auxiliaries with many.

Protocols (configs in configs/aux_lowlabel/; task 0 primary, tasks 1.. auxiliary):
  multimnist        left digit labelled on ``n_labelled`` training images (500 / 2,000), right
                    digit on every training image; MultiLeNet; metric: test accuracy, left digit.
  fashion_rotation  Fashion-MNIST class labelled on ``n_labelled`` images (1,000); the auxiliary
                    is self-supervised rotation prediction (0/90/180/270°) on every training
                    image; MultiLeNet with a class head and a rotation head; metric: test accuracy.
  qm9               one QM9 target (``primary``) labelled on ``label_fraction`` of the training
                    molecules (1 / 5 / 10 %), the ten others on all; compact MPNN; metric: test
                    MAE of the primary (original units).
  parkinsons        total_UPDRS labelled on ``label_fraction`` of the training recordings,
                    motor_UPDRS on all; MLP; metric: test MAE. ``"split": "patient"`` (default,
                    as in aux_tasks.py: ``n_test_patients`` unseen patients) or "recording"
                    (a ``test_fraction`` of all recordings: every test patient is seen in training).

Every step draws a primary batch from the labelled examples and an auxiliary batch from all
training examples (two forward passes through the shared model); the task losses are their
batch means and one ``taskgrad.backward`` applies the method. Held out from the training pool:
a validation set of ``n_val`` labelled examples (early stopping: the test metric is read at the
evaluation with the best validation metric) and the test set. The meta-learned methods
(Auto-λ, AuxiLearn, AuxiNash) call their ``update`` hook with the current batches as training
losses and a fresh batch of the labelled training examples as the primary "validation" loss
(Auto-λ's choice; the validation set stays untouched for early stopping): Auto-λ before every
step, AuxiLearn and AuxiNash after every ``meta_every`` steps (the authors' 25).

Logged per run: the test metric at the last step and at the best validation step, the
auxiliary training loss (first → min → last on a fixed monitor subset), the fraction of steps
on which each auxiliary has a positive weight (for PrimaryAux and PCD: its constraint is
active), the fraction of steps on which PrimaryAux's progress margin was infeasible, ms/step.
The summary gives mean ± std over seeds and paired t-tests (same seed = same split, init and
batches) against primary-only and against Sum.

Usage (each full protocol is 5 seeds × 13 methods; run one at a time):
  .venv/bin/python benchmarks/applications/aux_lowlabel.py \
      --config benchmarks/applications/configs/aux_lowlabel/multimnist_500.json
  ... --seeds 0 1 --methods primary-only sum "primary-aux" --steps 300   (a reduced run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_tasks import (
    REGRESSION,
    TwoHeadMLP,
    _rows,
    _subset,
    parkinsons_recording_split,
    parkinsons_split,
    qm9_split,
)
from common import OUT, BatchStream, load_config, save_rows, to_tensor

import taskgrad
from taskgrad.methods import get as get_method
from taskgrad.methods.base import Weighting
from taskgrad.models.lenet import MultiLeNet

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs" / "aux_lowlabel"
KINDS = ("multimnist", "fashion_rotation", "qm9", "parkinsons")


# ---------------------------------------------------------------------------- data


@dataclass
class LowLabelSplit:
    """Training pool (x, y) with y (N, k); ``labelled`` the indices of the pool whose primary
    label is used; (xv, yv) validation and (xt, yt) test, both labelled for every task; ``scale``
    maps the primary's standardized units back to the original ones (1 for classification)."""

    x: Any
    y: Tensor
    labelled: Tensor
    xv: Any
    yv: Tensor
    xt: Any
    yt: Tensor
    scale: float = 1.0


def _carve(n: int, n_labelled: int, n_val: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded permutation of the pool: (validation, labelled training, the rest of training)."""
    if n_labelled < 1 or n_val < 1 or n_labelled + n_val >= n:
        raise ValueError(
            f"need 1 ≤ n_labelled, 1 ≤ n_val and n_labelled + n_val < {n} (the pool), "
            f"got {n_labelled}, {n_val}."
        )
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return perm[:n_val], perm[n_val : n_val + n_labelled], perm[n_val + n_labelled :]


def _lowlabel(
    x: Any,
    y: Tensor,
    xt: Any,
    yt: Tensor,
    n_labelled: int,
    n_val: int,
    seed: int,
    scale: float = 1.0,
) -> LowLabelSplit:
    val, lab, rest = _carve(y.shape[0], n_labelled, n_val, seed)
    train = torch.cat([lab, rest])
    labelled = torch.arange(lab.shape[0])  # the labelled examples come first in the training pool
    return LowLabelSplit(
        _subset(x, train), y[train], labelled, _subset(x, val), y[val], xt, yt, scale
    )


def make_split(kind: str, data: Any, config: dict[str, Any], seed: int) -> LowLabelSplit:
    """The seed's split: validation and labelled examples drawn with the seed from the pool."""
    n_val = int(config.get("n_val", 500))
    if kind in ("multimnist", "fashion_rotation"):
        n = min(int(config.get("n_train", data.train_x.shape[0])), data.train_x.shape[0])
        idx = np.sort(
            np.random.default_rng(1000 + seed).choice(data.train_x.shape[0], n, replace=False)
        )
        n_test = min(int(config.get("n_test", data.test_x.shape[0])), data.test_x.shape[0])
        x, xt = to_tensor(data.train_x[idx]), to_tensor(data.test_x[:n_test])
        if kind == "multimnist":
            y, yt = torch.from_numpy(data.train_y[idx]), torch.from_numpy(data.test_y[:n_test])
        else:  # the rotation column is drawn per batch; 0 here
            y = torch.stack(
                [torch.from_numpy(data.train_y[idx]), torch.zeros(n, dtype=torch.long)], 1
            )
            yt = torch.stack(
                [torch.from_numpy(data.test_y[:n_test]), torch.zeros(n_test, dtype=torch.long)], 1
            )
        return _lowlabel(x, y, xt, yt, int(config["n_labelled"]), n_val, seed)
    if kind == "qm9":
        s = qm9_split(
            data,
            config["primary"],
            config["n_train"],
            config["n_test"],
            config.get("split_seed", 0),
        )
        n_lab = max(1, round(config["label_fraction"] * (s.y.shape[0] - n_val)))
        return _lowlabel(s.x, s.y, s.xt, s.yt, n_lab, n_val, seed, s.scale)
    if kind == "parkinsons":
        if config.get("split", "patient") == "recording":
            s = parkinsons_recording_split(data, config["test_fraction"], seed)
        else:
            s = parkinsons_split(data, config["n_test_patients"], seed)
        n_lab = max(1, round(config["label_fraction"] * (s.y.shape[0] - n_val)))
        return _lowlabel(s.x, s.y, s.xt, s.yt, n_lab, n_val, seed, s.scale)
    raise ValueError(f"unknown experiment {kind!r}: use one of {KINDS}.")


def load_data(config: dict[str, Any]) -> Any:
    """The real data of the experiment (only the script calls this, never the tests)."""
    kind = config["experiment"]
    if kind == "multimnist":
        from taskgrad.datasets.multimnist import load_multimnist

        return load_multimnist("mnist")
    if kind == "fashion_rotation":
        from taskgrad.datasets.images import load_fashion_mnist

        return load_fashion_mnist()
    if kind == "qm9":
        from taskgrad.datasets.qm9 import load_qm9

        return load_qm9()
    from taskgrad.datasets.tabular import load_parkinsons

    return load_parkinsons(ROOT / config["data_path"], target="both", drop=("test_time",))


# ---------------------------------------------------------------------------- model and losses


def make_model(kind: str, split: LowLabelSplit, config: dict[str, Any]) -> nn.Module:
    if kind in ("multimnist", "fashion_rotation"):
        return MultiLeNet(n_tasks=2)
    if kind == "qm9":
        from taskgrad.models.mpnn import MPNN

        return MPNN(
            split.y.shape[1], hidden=config.get("hidden", 64), n_layers=config.get("n_layers", 3)
        )
    return TwoHeadMLP(split.x.shape[1], config.get("hidden", 64), config.get("depth", 2))


def rotate(x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each image rotated by a random multiple r of 90° (drawn with ``gen``), and r."""
    r = torch.randint(0, 4, (x.shape[0],), generator=gen)
    out = x.clone()
    for q in range(1, 4):
        m = r == q
        if bool(m.any()):
            out[m] = torch.rot90(x[m], q, dims=(-2, -1))
    return out, r


def _loss(kind: str, out: Tensor, y: Tensor) -> Tensor:
    if kind in REGRESSION:
        return nn.functional.mse_loss(out.reshape(-1), y.float())
    return nn.functional.cross_entropy(out, y)


def batch_losses(
    kind: str, model: nn.Module, primary: tuple[Any, Tensor], aux: tuple[Any, Tensor]
) -> Tensor:
    """(k,) losses: the primary on its labelled batch, each auxiliary on the auxiliary batch."""
    xp, yp = primary
    xa, ya = aux
    _, outs_p = model(xp)
    _, outs_a = model(xa)
    return torch.stack(
        [_loss(kind, outs_p[0], yp[:, 0])]
        + [_loss(kind, o, ya[:, i + 1]) for i, o in enumerate(outs_a[1:])]
    )


@torch.no_grad()
def evaluate(
    kind: str, model: nn.Module, x: Any, y: Tensor, scale: float, batch: int = 2048
) -> dict[str, float]:
    """Primary metric (MAE·scale or accuracy) and the mean primary and auxiliary losses over (x, y)
    (the rotation auxiliary is evaluated on the images rotated by a fixed pattern)."""
    model.eval()
    n = y.shape[0]
    tot = torch.zeros(y.shape[1], dtype=torch.float64)
    metric = 0.0
    for i in range(0, n, batch):
        xb, yb = _rows(x, i, min(i + batch, n)), y[i : i + batch].clone()
        _, outs = model(xb)
        if kind == "fashion_rotation":
            xr, yb[:, 1] = rotate(xb, torch.Generator().manual_seed(i))
            outs = [outs[0], model(xr)[1][1]]
        tot += (
            torch.stack([_loss(kind, o, yb[:, j]).double() for j, o in enumerate(outs)])
            * yb.shape[0]
        )
        if kind in REGRESSION:
            metric += float((outs[0].reshape(-1) - yb[:, 0]).abs().sum()) * scale
        else:
            metric += float((outs[0].argmax(-1) == yb[:, 0]).sum())
    model.train()
    return {
        "loss_primary": float(tot[0]) / n,
        "loss_aux": float(tot[1:].mean()) / n,
        "metric": metric / n,
    }


# ---------------------------------------------------------------------------- one run


def make_method(spec: dict[str, Any]) -> Weighting:
    return get_method(spec["name"], **spec.get("kwargs", {}))


def _meta_kind(method: Weighting) -> str | None:
    """'before' (Auto-λ: a look-ahead step before each training step), 'after' (AuxiLearn,
    AuxiNash: a hypergradient step after every meta_every steps) or None."""
    name = getattr(method, "method_name", type(method).__name__.lower())
    if name == "auto-lambda":
        return "before"
    if name in ("auxilearn", "auxinash"):
        return "after"
    return None


def _closures(kind: str, model: nn.Module, pb: Any, ab: Any, vb: Any) -> tuple[Any, Any]:
    """The meta hooks' closures: the (k,) training losses of this step's batches, and the primary
    loss of a batch of labelled training examples (the meta-validation batch)."""

    def train_losses() -> Tensor:
        return batch_losses(kind, model, pb, ab)

    def val_loss() -> Tensor:
        return _loss(kind, model(vb[0])[1][0], vb[1][:, 0])

    return train_losses, val_loss


def run_one(
    kind: str,
    split: LowLabelSplit,
    spec: dict[str, Any],
    seed: int,
    steps: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Train one method; returns the metrics, the constraint activity and the curves."""
    torch.manual_seed(seed)
    model = make_model(kind, split, config)
    lr = float(config["lr"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    method = make_method(spec)
    meta = _meta_kind(method)
    meta_every = int(config.get("meta_every", 25))
    bs = int(config["batch_size"])
    xl, yl = _subset(split.x, split.labelled), split.y[split.labelled]
    s_primary = BatchStream(xl, yl, config.get("primary_batch_size", bs), seed)
    s_meta = BatchStream(xl, yl, config.get("primary_batch_size", bs), 7919 + seed)
    s_aux = BatchStream(split.x, split.y, bs, 104_729 + seed)
    rot_gen = torch.Generator().manual_seed(31 + seed)
    n_mon = min(int(config.get("n_monitor", 1000)), split.y.shape[0])
    mon = torch.randperm(split.y.shape[0], generator=torch.Generator().manual_seed(10_000 + seed))[
        :n_mon
    ]
    xm, ym = _subset(split.x, mon), split.y[mon]
    eval_every = max(1, int(config.get("eval_every", max(1, steps // 20))))
    curve: list[dict[str, float]] = []

    def aux_batch() -> tuple[Any, Tensor]:
        xa, ya = s_aux.next()
        if kind == "fashion_rotation":
            ya = ya.clone()
            xa, ya[:, 1] = rotate(xa, rot_gen)
        return xa, ya

    def record(step: int) -> None:
        tr = evaluate(kind, model, xm, ym, split.scale)
        va = evaluate(kind, model, split.xv, split.yv, split.scale)
        te = evaluate(kind, model, split.xt, split.yt, split.scale)
        curve.append(
            {
                "step": step,
                "train_aux": tr["loss_aux"],
                "val_metric": va["metric"],
                "test_metric": te["metric"],
            }
        )

    record(0)
    k = split.y.shape[1]
    positive = np.zeros(k - 1)
    infeasible = 0
    secs = 0.0
    for step in range(1, steps + 1):
        pb, ab = s_primary.next(), aux_batch()
        t0 = time.perf_counter()
        if meta == "before":
            train_fn, val_fn = _closures(kind, model, pb, ab, s_meta.next())
            method.update(model.parameters(), train_fn, val_fn, lr=lr)  # type: ignore[attr-defined]
        opt.zero_grad(set_to_none=True)
        losses = batch_losses(kind, model, pb, ab)
        res = taskgrad.backward(
            losses, method=method
        )  # stacked: each task followed to its own graph
        opt.step()
        if meta == "after" and step % meta_every == 0:
            train_fn, val_fn = _closures(kind, model, pb, ab, s_meta.next())
            method.update(model.parameters(), train_fn, val_fn)  # type: ignore[attr-defined]
        secs += time.perf_counter() - t0
        w = res.weights.detach().double()
        positive += (w[1:] > 0).numpy()
        info = getattr(method, "last_info", None)
        if isinstance(info, dict) and "infeasible" in info:
            infeasible += int(bool(info["infeasible"]))
        if step % eval_every == 0 or step == steps:
            record(step)
    pick = min if kind in REGRESSION else max
    best = pick(curve, key=lambda c: c["val_metric"])
    aux_curve = [c["train_aux"] for c in curve]
    return {
        "experiment": kind,
        "method": spec["label"],
        "seed": seed,
        "steps": steps,
        "test_metric": curve[-1]["test_metric"],
        "test_metric_at_best_val": best["test_metric"],
        "best_val_step": best["step"],
        "train_aux_first": aux_curve[0],
        "train_aux_min": min(aux_curve),
        "train_aux_last": aux_curve[-1],
        "frac_aux_positive": (positive / steps).tolist(),
        "frac_infeasible": infeasible / steps,
        "ms_per_step": 1000 * secs / steps,
        "curve": curve,
    }


# ---------------------------------------------------------------------------- grid and report


def run(
    config: dict[str, Any], data: Any = None, smoke: bool = False, out_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Every (seed, method) of the config, seeds outermost. ``data`` replaces the real data (tests);
    ``smoke``: the first seed, one step per method, nothing saved."""
    torch.set_num_threads(int(config.get("threads", 1)))
    kind = config["experiment"]
    data = load_data(config) if data is None else data
    seeds = config["seeds"][:1] if smoke else config["seeds"]
    out_dir = out_dir or OUT
    stem = config.get("name", f"aux_lowlabel_{kind}")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        split = make_split(kind, data, config, seed)
        for spec in config["methods"]:
            steps = 1 if smoke else int(config["steps"])
            cfg = {**config, "eval_every": 1, "meta_every": 1} if smoke else config
            rows.append(run_one(kind, split, spec, seed, steps, cfg))
            if not smoke:
                save_rows([_flat(r) for r in rows], stem + "_partial", out_dir)
                print(
                    f"seed {seed} {spec['label']}: test {rows[-1]['test_metric']:.4f}, "
                    f"early-stopped {rows[-1]['test_metric_at_best_val']:.4f}",
                    flush=True,
                )
    if not smoke:
        save_rows([_flat(r) for r in rows], stem, out_dir)
        with open(out_dir / f"{stem}_curves.json", "w") as f:
            json.dump(
                [{"method": r["method"], "seed": r["seed"], "curve": r["curve"]} for r in rows], f
            )
        summarize(rows, config, out_dir / f"{stem}_summary.md")
        plot(rows, config, out_dir / f"{stem}.png")
    return rows


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items() if k != "curve"}


def paired_values(
    rows: list[dict[str, Any]], label: str, base: str, key: str
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(label's values, base's values, two-sided paired t-test p) of ``key`` over the seeds both
    ran, matched by seed; p is None with fewer than two pairs or identical values."""
    a = {r["seed"]: r[key] for r in rows if r["method"] == label}
    b = {r["seed"]: r[key] for r in rows if r["method"] == base}
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    if len(seeds) < 2 or np.allclose(x - y, 0):
        return x, y, None
    from scipy.stats import ttest_rel

    return x, y, float(ttest_rel(x, y).pvalue)


def paired(rows: list[dict[str, Any]], label: str, base: str, key: str, mult: float) -> str:
    """Mean ± std of the paired differences (label − base, matched by seed) and the two-sided
    paired t-test p-value (scipy.stats.ttest_rel); '—' without at least two pairs."""
    a, b, p = paired_values(rows, label, base, key)
    if label == base or a.size < 2:
        return "—"
    d = (a - b) * mult
    if p is None:
        return f"{d.mean():+.3f} (identical)"
    return f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} (p={p:.2g})"


def aux_metric_correlation(rows: list[dict[str, Any]]) -> tuple[float, float, int] | None:
    """(Spearman ρ, p-value, n methods) between each method's last auxiliary training loss and
    its early-stopped test metric, both averaged over seeds: does training the auxiliaries
    further go with a better primary? None with fewer than three methods or a constant."""
    methods = sorted({r["method"] for r in rows})
    if len(methods) < 3:
        return None
    from scipy.stats import spearmanr

    def mean(m: str, key: str) -> float:
        return float(np.mean([r[key] for r in rows if r["method"] == m]))

    aux = [mean(m, "train_aux_last") for m in methods]
    metric = [mean(m, "test_metric_at_best_val") for m in methods]
    if np.ptp(aux) == 0 or np.ptp(metric) == 0:  # a constant: ρ is undefined
        return None
    res = spearmanr(aux, metric)
    return float(res.statistic), float(res.pvalue), len(methods)


def summarize(rows: list[dict[str, Any]], config: dict[str, Any], path: Path | None = None) -> str:
    """Markdown: per method the early-stopped test metric (mean ± std over seeds), paired
    differences and t-tests against primary-only and Sum, the last-step metric, the auxiliary
    training loss, how often each auxiliary had a positive weight, infeasible steps, ms/step."""
    kind = config["experiment"]
    mult = 1.0 if kind in REGRESSION else 100.0
    metric = "test MAE" if kind in REGRESSION else "test accuracy (%)"
    lines = [
        (
            f"| method | {metric}, early-stopped | Δ vs primary-only | Δ vs sum | "
            f"{metric}, last step | train aux loss first → min → last | steps with w_aux > 0 | "
            "infeasible steps | ms/step |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in config["methods"]:
        rs = [r for r in rows if r["method"] == spec["label"]]
        if not rs:
            continue
        es = np.array([r["test_metric_at_best_val"] for r in rs]) * mult
        last = np.array([r["test_metric"] for r in rs]) * mult
        pos = np.mean(
            [
                json.loads(r["frac_aux_positive"])
                if isinstance(r["frac_aux_positive"], str)
                else r["frac_aux_positive"]
                for r in rs
            ],
            0,
        )
        pos_txt = f"{100 * pos.mean():.0f}%" + (
            f" (min {100 * pos.min():.0f}%)" if pos.size > 1 else ""
        )

        def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[key] for r in rs]))

        lines.append(
            f"| {spec['label']} | {es.mean():.3f} ± {es.std(ddof=1) if len(es) > 1 else 0.0:.3f} | "
            f"{paired(rows, spec['label'], 'primary-only', 'test_metric_at_best_val', mult)} | "
            f"{paired(rows, spec['label'], 'sum', 'test_metric_at_best_val', mult)} | "
            f"{last.mean():.3f} ± {last.std(ddof=1) if len(last) > 1 else 0.0:.3f} | "
            f"{m('train_aux_first'):.3f} → {m('train_aux_min'):.3f} → "
            f"{m('train_aux_last'):.3f} | {pos_txt} | "
            f"{100 * m('frac_infeasible'):.0f}% | {m('ms_per_step'):.1f} |"
        )
    text = (
        f"{config.get('name', kind)}: {len({r['seed'] for r in rows})} seed(s), "
        f"{rows[0]['steps']} steps\n\n" + "\n".join(lines) + "\n"
    )
    rho = aux_metric_correlation(rows)
    if rho is not None:
        text += (
            f"\nSpearman ρ over the {rho[2]} methods between the last auxiliary training loss "
            f"and the early-stopped test metric (means over seeds): {rho[0]:+.2f} "
            f"(p={rho[1]:.2g}).\n"
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def load_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The rows of saved runs (the ``<stem>.json`` files ``run`` writes), concatenated; a later
    file's (method, seed) replaces an earlier one's, so a rerun of some methods can be merged in."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f):
                merged[(r["method"], int(r["seed"]))] = r
    return list(merged.values())


def plot(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> Path:
    """Per method, the early-stopped test metric minus primary-only's, paired by seed: each seed a
    dot, the mean a bar (better is up: accuracy gained or MAE lost), a star where p < 0.05."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = config["experiment"]
    sign, unit = (-1.0, "MAE") if kind in REGRESSION else (100.0, "accuracy, points")
    labels = [m["label"] for m in config["methods"] if m["label"] != "primary-only"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels)), 3.6))
    for i, label in enumerate(labels):
        mine, base, p = paired_values(rows, label, "primary-only", "test_metric_at_best_val")
        if not mine.size:
            continue
        d = (mine - base) * sign
        ax.bar(i, d.mean(), color="tab:blue" if d.mean() >= 0 else "tab:red", alpha=0.6)
        ax.scatter(np.full(d.shape, i), d, s=10, color="k", zorder=3)
        if p is not None and p < 0.05:
            ax.text(i, d.max(), "*", ha="center", va="bottom", fontsize=14)
    ax.axhline(0, color="k", lw=0.8)
    ax.margins(y=0.15)  # room for the stars
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"gain over primary-only\n({unit}; up is better)")
    title = f"{config.get('name', kind)}: early-stopped test metric, paired by seed"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=str(CONFIGS / "multimnist_500.json"))
    ap.add_argument("--seeds", type=int, nargs="*", help="override the config's seeds")
    ap.add_argument("--methods", nargs="*", help="run only the config's methods with these labels")
    ap.add_argument(
        "--steps", type=int, help="override the config's number of steps (a reduced run)"
    )
    ap.add_argument("--name", help="output stem (default: the config's name)")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="ROWS_JSON",
        help="train nothing: summarize and plot the saved rows of earlier runs of --config "
        "(e.g. a primary-only/Sum check and the other methods run later)",
    )
    args = ap.parse_args()
    config = load_config(args.config)
    if args.methods:
        labels = [m["label"] for m in config["methods"]]
        unknown = sorted(set(args.methods) - set(labels))
        if unknown:
            raise SystemExit(
                f"--methods: {unknown} are not labels of {args.config}; its labels are {labels}"
            )
        config["methods"] = [m for m in config["methods"] if m["label"] in args.methods]
    if args.seeds:
        config["seeds"] = args.seeds
    if args.steps:
        config["steps"] = args.steps
    if args.name:
        config["name"] = args.name
    if args.merge:
        rows = load_rows(args.merge)
        stem = config.get("name", f"aux_lowlabel_{config['experiment']}")
        print(summarize(rows, config, OUT / f"{stem}_summary.md"))
        print(f"plot: {plot(rows, config, OUT / f'{stem}.png')}")
        return
    t = time.perf_counter()
    rows = run(config)
    print(summarize(rows, config))
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
