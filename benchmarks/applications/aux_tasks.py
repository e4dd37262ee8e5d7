"""Auxiliary-task learning: one primary task helped (or not) by an auxiliary one.

Experiments (task 0 primary, tasks 1..k−1 auxiliary, a shared encoder with one head per task):
  parkinsons  UCI Parkinsons telemonitoring, shared inputs: total_UPDRS (primary) and
              motor_UPDRS (auxiliary) on the same recordings; split by patient (config
              "n_test_patients", "n_val_patients") or, with "split": "time", within each patient
              in time (the last "test_frac" of a patient's visits test, the "val_frac" before
              them validation); features and targets standardized with training statistics; MLP
              encoder + two linear heads; MSE on standardized targets. Metric: test MAE of
              total_UPDRS (original units), at the last step and, when there is a validation
              set, at the recorded step with the best validation MAE (early stopping).
  multimnist  MultiMNIST, left digit (primary) and right digit (auxiliary); the MultiLeNet of
              taskgrad.models.lenet; cross-entropy. Metric: test accuracy on the left digit.
  qm9         QM9 (qm9pack): the config's ``primary`` target (e.g. mu, gap, U0) primary and the
              other ten targets auxiliary; targets standardized with training statistics; the
              compact MPNN of taskgrad.models.mpnn; MSE per standardized target. Metric: test
              MAE of the primary in original units (meV for energies).

Methods (taskgrad.methods registry, trained through ``taskgrad.backward``): each entry of the
config's ``methods`` is {"label", "name", "kwargs", "source"} with source "params" (Gram of the
shared-parameter gradients) or "features" (Gram of ∂Lᵢ/∂z, the representation source).

Recorded per run: the primary metric, the auxiliary loss over training (the mean of the
auxiliary tasks' losses on a fixed training subset, every ``eval_every`` steps), time per step
(forward + weighting + backward + optimizer step, evaluation excluded), and the fraction of
checked steps whose update direction u (the filled .grad of the shared parameters) raises some
auxiliary loss to first order, ⟨g_i, u⟩ < 0 for an auxiliary i. The check is made on the shared
parameters whatever the source, so for the "features" source it measures how often the
representation approximation lets an auxiliary rise in parameter space.

Usage:
  .venv/bin/python benchmarks/applications/aux_tasks.py --config
  benchmarks/applications/configs/aux_tasks/parkinsons.json
  .venv/bin/python benchmarks/applications/aux_tasks.py --config
  benchmarks/applications/configs/aux_tasks/multimnist.json
  .venv/bin/python benchmarks/applications/aux_tasks.py --config
  benchmarks/applications/configs/aux_tasks/qm9_mu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, BatchStream, load_config, save_rows, to_tensor

import taskgrad
from taskgrad.datasets.multimnist import MultiDigits
from taskgrad.datasets.tabular import TaskData
from taskgrad.methods import get as get_method
from taskgrad.methods.base import Weighting
from taskgrad.models.lenet import MultiLeNet

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs" / "aux_tasks"
# the eleven QM9 targets in their standard order, and those in eV in the data (reported in meV)
QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")
QM9_ENERGIES = {"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"}


# ---------------------------------------------------------------------------- data


@dataclass
class Split:
    """Training and test inputs (tensors, or molecules for qm9) and targets; y is (N, k), column 0
    the primary; ``scale`` maps the primary's standardized units back to the original ones (1 for
    classification); ``xv, yv`` an optional validation set, used only to pick the early-stopping
    step (the test metric is then read at the step with the best validation metric)."""

    x: Any
    y: Tensor
    xt: Any
    yt: Tensor
    scale: float = 1.0
    xv: Any = None
    yv: Tensor | None = None


def parkinsons_split(
    data: TaskData, n_test_patients: int, seed: int, n_val_patients: int = 0
) -> Split:
    """Patient-level split (``n_test_patients`` test and ``n_val_patients`` validation patients
    held out, drawn with ``seed``), x and y standardized with the training mean/std:
    x ← (x − μ)/σ; y = (total, motor) likewise."""
    if data.tasks[0][1].ndim != 2 or data.tasks[0][1].shape[1] != 2:
        raise ValueError(
            "parkinsons_split needs both targets: load with load_parkinsons(path, target='both')."
        )
    if not 0 < n_test_patients < data.n_tasks:
        raise ValueError(
            f"n_test_patients must be in [1, {data.n_tasks - 1}], got {n_test_patients}."
        )
    if not 0 <= n_val_patients < data.n_tasks - n_test_patients:
        raise ValueError(
            f"n_val_patients must be in [0, {data.n_tasks - n_test_patients - 1}] "
            f"(at least one training patient is left), got {n_val_patients}."
        )
    order = list(data.target_names)
    cols = [order.index("total_UPDRS"), order.index("motor_UPDRS")]
    perm = np.random.default_rng(seed).permutation(data.n_tasks)
    ids = {
        "test": perm[:n_test_patients],
        "val": perm[n_test_patients : n_test_patients + n_val_patients],
        "train": perm[n_test_patients + n_val_patients :],
    }
    return _standardized_split(
        {
            name: [(data.tasks[i][0], data.tasks[i][1][:, cols]) for i in part]
            for name, part in ids.items()
        }
    )


def parkinsons_recording_split(data: TaskData, test_fraction: float, seed: int) -> Split:
    """Recording-level split: a ``test_fraction`` of all recordings, drawn with ``seed`` across
    every patient, is the test set (each patient is seen in training), standardized as
    :func:`parkinsons_split` does."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    order = list(data.target_names)
    cols = [order.index("total_UPDRS"), order.index("motor_UPDRS")]
    X = np.concatenate([t[0] for t in data.tasks])
    Y = np.concatenate([t[1][:, cols] for t in data.tasks])
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    n_test = max(1, round(test_fraction * X.shape[0]))
    te, tr = perm[:n_test], perm[n_test:]
    return _standardized_split({"train": [(X[tr], Y[tr])], "test": [(X[te], Y[te])]})


def _standardized_split(parts: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> Split:
    """The Split of the (x, y) blocks of "train", "test" and (if non-empty) "val", x and y
    standardized with the training mean/std: a ← (a − μ)/σ (σ = 0 read as 1)."""
    X, Y = (np.concatenate([b[i] for b in parts["train"]]) for i in (0, 1))
    mx, sx = X.mean(0), X.std(0)
    sx[sx == 0] = 1.0
    my, sy = Y.mean(0), Y.std(0)
    sy[sy == 0] = 1.0

    def f(name: str, i: int) -> Tensor:
        mu, sd = (mx, sx) if i == 0 else (my, sy)
        return torch.from_numpy((np.concatenate([b[i] for b in parts[name]]) - mu) / sd).float()

    split = Split(f("train", 0), f("train", 1), f("test", 0), f("test", 1), float(sy[0]))
    if sum(len(b[0]) for b in parts.get("val", ())):
        split.xv, split.yv = f("val", 0), f("val", 1)
    return split


def parkinsons_time_split(data: TaskData, test_frac: float = 0.3, val_frac: float = 0.15) -> Split:
    """Within-patient split in time: each patient's recordings ordered by ``test_time``, the last
    ``test_frac`` of them test, the ``val_frac`` before those validation, the rest training (every
    patient is seen in training; the task is to track a known patient's later visits). The
    ``test_time`` column is used for the order and dropped from the features; x and y
    standardized with the training mean/std as in :func:`parkinsons_split`."""
    if "test_time" not in data.feature_names:
        raise ValueError(
            "parkinsons_time_split needs the test_time column: load with "
            "load_parkinsons(path, target='both', drop=())."
        )
    if data.tasks[0][1].ndim != 2 or data.tasks[0][1].shape[1] != 2:
        raise ValueError(
            "parkinsons_time_split needs both targets: load with load_parkinsons(path, "
            "target='both', drop=())."
        )
    if not (0 < test_frac < 1 and 0 <= val_frac < 1 and test_frac + val_frac < 1):
        raise ValueError(
            f"need 0 < test_frac, 0 <= val_frac and test_frac + val_frac < 1; got {test_frac}, "
            f"{val_frac}."
        )
    order = list(data.target_names)
    cols = [order.index("total_UPDRS"), order.index("motor_UPDRS")]
    t_col = list(data.feature_names).index("test_time")
    keep = [j for j in range(len(data.feature_names)) if j != t_col]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": [], "test": []}
    for x, y in data.tasks:
        idx = np.argsort(x[:, t_col], kind="stable")
        n = len(idx)
        n_test = max(1, int(np.ceil(test_frac * n)))
        n_val = int(np.ceil(val_frac * n)) if val_frac else 0
        n_train = n - n_test - n_val
        if n_train < 1:
            raise ValueError(
                f"a patient with {n} recordings leaves no training rows; lower test_frac/val_frac."
            )
        for name, sl in (
            ("train", idx[:n_train]),
            ("val", idx[n_train : n_train + n_val]),
            ("test", idx[n_train + n_val :]),
        ):
            parts[name].append((x[sl][:, keep], y[sl][:, cols]))
    return _standardized_split(parts)


def multimnist_split(data: MultiDigits, n_train: int, n_test: int, seed: int) -> Split:
    """The first ``n_test`` test images and ``n_train`` training images drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    n_train = min(n_train, data.train_x.shape[0])
    idx = np.sort(rng.choice(data.train_x.shape[0], size=n_train, replace=False))
    n_test = min(n_test, data.test_x.shape[0])
    return Split(
        to_tensor(data.train_x[idx]),
        torch.from_numpy(data.train_y[idx]),
        to_tensor(data.test_x[:n_test]),
        torch.from_numpy(data.test_y[:n_test]),
    )


def qm9_split(data: Any, primary: str, n_train: int, n_test: int, split_seed: int = 0) -> Split:
    """QM9 with ``primary`` first and the other targets after it (standard order), the seeded split
    of :func:`taskgrad.datasets.qm9.split_qm9` (110,000/10,000/rest on the full data; 80 %/10 %/rest
    of a smaller data set), its first ``n_train`` training molecules and first ``n_test`` test
    molecules; targets standardized with the training mean/std."""
    from taskgrad.bench.problems.qm9 import QM9Problem

    if primary not in QM9_TARGETS:
        raise ValueError(f"unknown QM9 target {primary!r}: use one of {list(QM9_TARGETS)}.")
    tasks = (primary,) + tuple(t for t in QM9_TARGETS if t != primary)
    n = len(data)
    p = QM9Problem(
        tasks=tasks,
        split_seed=split_seed,
        n_train=min(110_000, int(0.8 * n)),
        n_val=min(10_000, n // 10),
        subset=n_train,
        n_test=n_test,
        data=data,
    )
    return Split(p.x["train"], p.y["train"], p.x["test"], p.y["test"], float(p.scale[0]))


def fake_qm9(n_molecules: int = 400, seed: int = 0) -> Any:
    """Tiny generated molecules (3–8 random H/C/N/O atoms at random positions; targets linear in the
    atom count and the sum of atomic numbers, plus noise) in the QM9Data layout, for tests."""
    from taskgrad.datasets.qm9 import QM9Data

    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 9, n_molecules)
    z = rng.choice(np.array([1, 6, 7, 8], dtype=np.uint8), counts.sum())
    pos = (1.5 * rng.normal(size=(counts.sum(), 3))).astype(np.float32)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    feats = np.stack([np.add.reduceat(z.astype(float), ptr[:-1]), counts.astype(float)], 1)
    y = feats @ rng.normal(size=(2, 11)) + 0.1 * rng.normal(size=(n_molecules, 11))
    return QM9Data(z, pos, ptr, y, np.arange(n_molecules))


def fake_parkinsons(
    n_patients: int = 8, per_patient: int = 25, n_features: int = 19, seed: int = 0
) -> TaskData:
    """Tiny generated stand-in for the Parkinsons data (target='both' layout, the last feature named
    ``test_time`` holding random visit days, as when loaded with ``drop=()``), for tests."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_features,))
    tasks = []
    for _ in range(n_patients):
        X = rng.normal(size=(per_patient, n_features))
        X[:, -1] = rng.uniform(0, 200, per_patient)
        motor = X[:, :-1] @ w[:-1] + 0.01 * X[:, -1] + rng.normal(size=per_patient)
        total = 1.2 * motor + rng.normal(size=per_patient)
        tasks.append((X, np.stack([motor, total], 1)))
    names = [f"f{i}" for i in range(n_features - 1)] + ["test_time"]
    return TaskData(tasks, names, ["motor_UPDRS", "total_UPDRS"], list(range(n_patients)))


def fake_multimnist(n_train: int = 256, n_test: int = 64, seed: int = 0) -> MultiDigits:
    """Random uint8 28×28 images with random (left, right) labels, for tests."""
    rng = np.random.default_rng(seed)
    return MultiDigits(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, (n_train, 2)).astype(np.int64),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, (n_test, 2)).astype(np.int64),
    )


# ---------------------------------------------------------------------------- models and tasks


class TwoHeadMLP(nn.Module):
    """x ↦ z = MLP(x) (ReLU, ``depth`` layers of width ``hidden``); heads: z ↦ ŷ₀, z ↦ ŷ₁
    (linear).
    """

    def __init__(self, n_in: int, hidden: int = 64, depth: int = 2, n_tasks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.encoder(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


REGRESSION = ("parkinsons", "qm9")


def task_losses(kind: str, outs: list[Tensor], y: Tensor) -> list[Tensor]:
    """Per-task mean losses: MSE (regression) or cross-entropy (classification)."""
    if kind in REGRESSION:
        return [nn.functional.mse_loss(o.reshape(-1), y[:, i]) for i, o in enumerate(outs)]
    return [nn.functional.cross_entropy(o, y[:, i]) for i, o in enumerate(outs)]


def _subset(x: Any, idx: Tensor) -> Any:
    """The examples ``idx`` as a data set of the same kind (a tensor, or a molecule set)."""
    if isinstance(x, Tensor):
        return x[idx]
    return type(x).select(x.z.numpy(), x.pos.numpy(), x.ptr.numpy(), idx.numpy())


def _rows(x: Any, lo: int, hi: int) -> Any:
    """Examples lo..hi−1 of a tensor or of a molecule set (indexed by a tensor of indices)."""
    return x[lo:hi] if isinstance(x, Tensor) else x[torch.arange(lo, hi)]


@torch.no_grad()
def evaluate(
    kind: str, model: nn.Module, x: Tensor, y: Tensor, scale: float, batch: int = 2048
) -> dict[str, float]:
    """Mean task losses over (x, y), the primary's and the mean of the auxiliaries', and the
    primary metric: MAE·scale (regression) or accuracy."""
    model.eval()
    n = y.shape[0]
    tot = torch.zeros(y.shape[1], dtype=torch.float64)
    metric = 0.0
    for i in range(0, n, batch):
        xb, yb = _rows(x, i, min(i + batch, n)), y[i : i + batch]
        _, outs = model(xb)
        tot += torch.stack([L.double() for L in task_losses(kind, outs, yb)]) * yb.shape[0]
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


def make_model(kind: str, split: Split, config: dict[str, Any]) -> nn.Module:
    if kind == "parkinsons":
        return TwoHeadMLP(split.x.shape[1], config.get("hidden", 64), config.get("depth", 2))
    if kind == "multimnist":
        return MultiLeNet(n_tasks=2)
    if kind == "qm9":
        from taskgrad.models.mpnn import MPNN

        return MPNN(
            split.y.shape[1], hidden=config.get("hidden", 64), n_layers=config.get("n_layers", 3)
        )
    raise ValueError(f"unknown experiment {kind!r}: use 'parkinsons', 'multimnist' or 'qm9'.")


def make_optimizer(model: nn.Module, config: dict[str, Any]) -> torch.optim.Optimizer:
    name = config.get("optimizer", "adam")
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=config["lr"])
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config["lr"], momentum=config.get("momentum", 0.0)
        )
    raise ValueError(f"unknown optimizer {name!r}: use 'adam' or 'sgd'.")


def make_method(spec: dict[str, Any]) -> Weighting:
    """The registry method ``spec["name"]`` with ``spec["kwargs"]``."""
    return get_method(spec["name"], **spec.get("kwargs", {}))


def _shared(model: nn.Module) -> list[Tensor]:
    """Every parameter outside the task heads (the encoder of the two-head models, the MPNN's
    embedding, message passing and readout)."""
    return [p for n, p in model.named_parameters() if not n.startswith("heads.")]


# ---------------------------------------------------------------------------- one run


def run_one(
    kind: str, split: Split, spec: dict[str, Any], seed: int, steps: int, config: dict[str, Any]
) -> dict[str, Any]:
    """Train one method for ``steps`` steps; returns the final metrics and the curves."""
    torch.manual_seed(seed)
    model = make_model(kind, split, config)
    opt = make_optimizer(model, config)
    method = make_method(spec)
    use_z = spec.get("source", "params") == "features"
    stream = BatchStream(split.x, split.y, config["batch_size"], seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    n_mon = min(config.get("n_monitor", 2000), split.y.shape[0])
    mon = torch.randperm(split.y.shape[0], generator=gen)[:n_mon]
    xm, ym = _subset(split.x, mon), split.y[mon]
    eval_every = max(1, config.get("eval_every", max(1, steps // 20)))
    check_every = config.get("check_every", 10)
    curve: list[dict[str, float]] = []

    def record(step: int) -> None:
        tr = evaluate(kind, model, xm, ym, split.scale)
        te = evaluate(kind, model, split.xt, split.yt, split.scale)
        curve.append(
            {
                "step": step,
                "train_aux": tr["loss_aux"],
                "train_primary": tr["loss_primary"],
                "test_aux": te["loss_aux"],
                "test_metric": te["metric"],
            }
        )
        if split.yv is not None:
            curve[-1]["val_metric"] = evaluate(kind, model, split.xv, split.yv, split.scale)[
                "metric"
            ]

    record(0)
    secs = 0.0
    w_aux: list[float] = []
    raised = checked = 0
    for step in range(1, steps + 1):
        xb, yb = stream.next()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        z, outs = model(xb)
        losses = task_losses(kind, outs, yb)
        g_aux = None
        if step % check_every == 0:  # outside the timed region below
            secs += time.perf_counter() - t0
            shared = _shared(model)
            g_aux = [
                _flat_grad(
                    torch.autograd.grad(L, shared, retain_graph=True, allow_unused=True), shared
                )
                for L in losses[1:]
            ]
            t0 = time.perf_counter()
        res = taskgrad.backward(losses, method=method, features=z if use_z else None)
        opt.step()
        secs += time.perf_counter() - t0
        w_aux.append(float(res.weights[1:].sum()))
        if g_aux is not None:
            shared = _shared(model)
            u = _flat_grad([p.grad for p in shared], shared)
            checked += 1
            raised += int(
                any(float(g @ u) < -1e-6 * max(float(g.norm() * u.norm()), 1e-30) for g in g_aux)
            )
        if step % eval_every == 0 or step == steps:
            record(step)
    final = evaluate(kind, model, split.xt, split.yt, split.scale)
    aux_curve = [c["train_aux"] for c in curve]
    early: dict[str, Any] = {}
    if split.yv is not None:  # early stopping: the recorded step with the best validation metric
        pick = min if kind in REGRESSION else max
        best = pick(curve, key=lambda c: c["val_metric"])
        early = {
            "best_val_step": best["step"],
            "best_val_metric": best["val_metric"],
            "test_metric_at_best_val": best["test_metric"],
        }
    return {
        "experiment": kind,
        "method": spec["label"],
        "seed": seed,
        "steps": steps,
        "test_metric": final["metric"],
        "test_loss_primary": final["loss_primary"],
        "test_loss_aux": final["loss_aux"],
        "train_aux_first": aux_curve[0],
        "train_aux_min": min(aux_curve),
        "train_aux_last": aux_curve[-1],
        # largest rise of the monitored training aux loss above its running minimum
        "train_aux_max_rise": max(a - min(aux_curve[: i + 1]) for i, a in enumerate(aux_curve)),
        "aux_weight_mean": float(np.mean(w_aux)),
        "frac_aux_raised": raised / max(checked, 1),
        "ms_per_step": 1000 * secs / steps,
        **early,
        "curve": curve,
    }


def _flat_grad(grads: Any, params: list[Tensor]) -> Tensor:
    """One flat vector from per-parameter gradients (None read as zero)."""
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def time_methods(
    kind: str,
    split: Split,
    config: dict[str, Any],
    steps: int = 20,
    rounds: int = 3,
    warmup: int = 3,
) -> dict[str, float]:
    """Median ms per training step of each method, the methods interleaved round by round (so a
    change in machine load hits all of them alike); same data, init and batches for all."""
    torch.set_num_threads(config.get("threads", 1))
    times: dict[str, list[float]] = {m["label"]: [] for m in config["methods"]}
    for r in range(rounds):
        for spec in config["methods"]:
            torch.manual_seed(r)
            model = make_model(kind, split, config)
            opt, method = make_optimizer(model, config), make_method(spec)
            use_z = spec.get("source", "params") == "features"
            stream = BatchStream(split.x, split.y, config["batch_size"], r)
            for i in range(warmup + steps):
                if i == warmup:
                    t0 = time.perf_counter()
                xb, yb = stream.next()
                opt.zero_grad(set_to_none=True)
                z, outs = model(xb)
                taskgrad.backward(
                    task_losses(kind, outs, yb), method=method, features=z if use_z else None
                )
                opt.step()
            times[spec["label"]].append(1000 * (time.perf_counter() - t0) / steps)
    return {k: float(np.median(v)) for k, v in times.items()}


# ---------------------------------------------------------------------------- the grid


def _load(config: dict[str, Any]) -> Any:
    """The real data of the experiment (only the scripts call this, never the tests)."""
    if config["experiment"] == "parkinsons":
        from taskgrad.datasets.tabular import load_parkinsons

        drop = () if config.get("split", "patient") == "time" else ("test_time",)
        return load_parkinsons(ROOT / config["data_path"], target="both", drop=drop)
    if config["experiment"] == "qm9":
        from taskgrad.datasets.qm9 import load_qm9

        return load_qm9()
    from taskgrad.datasets.multimnist import load_multimnist

    return load_multimnist("mnist")


def make_split(kind: str, data: Any, config: dict[str, Any], seed: int) -> Split:
    """The experiment's split for ``seed``: Parkinsons and MultiMNIST draw it with the seed; QM9
    keeps the split of ``split_seed`` (0) fixed, so that seeds vary only the model and batches."""
    if kind == "parkinsons" and config.get("split", "patient") == "time":
        return parkinsons_time_split(
            data, config.get("test_frac", 0.3), config.get("val_frac", 0.15)
        )
    if kind == "parkinsons":
        n_test = min(config["n_test_patients"], data.n_tasks - 1)
        n_val = min(config.get("n_val_patients", 0), data.n_tasks - n_test - 1)
        return parkinsons_split(data, n_test, seed, n_val)
    if kind == "qm9":
        return qm9_split(
            data,
            config["primary"],
            config["n_train"],
            config["n_test"],
            config.get("split_seed", 0),
        )
    return multimnist_split(data, config["n_train"], config["n_test"], seed)


def run(
    config: dict[str, Any],
    data: Any = None,
    smoke: bool = False,
    out_dir: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (seed, method) of the config. ``data``: a TaskData (parkinsons), MultiDigits
    (multimnist) or QM9Data (qm9) to use instead of the real data; ``smoke``: one step per run,
    nothing saved.
    """
    torch.set_num_threads(config.get("threads", 1))
    kind = config["experiment"]
    data = _load(config) if data is None else data
    seeds = config["seeds"][:1] if smoke else config["seeds"]
    jobs = [(seed, spec) for seed in seeds for spec in config["methods"]]
    out_dir = out_dir or OUT
    stem = config.get("name", f"aux_{kind}")
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task(stem, total=len(jobs))
        splits: dict[int, Split] = {}  # one split per seed, shared by its methods (read only)
        for seed, spec in jobs:
            if seed not in splits:
                splits[seed] = make_split(kind, data, config, seed)
            split = splits[seed]
            steps = 1 if smoke else int(config["steps"])
            rows.append(
                run_one(
                    kind, split, spec, seed, steps, {**config, "eval_every": 1} if smoke else config
                )
            )
            bar.advance(task)
            if not smoke:
                save_rows([_flat(r) for r in rows], stem + "_partial", out_dir)
                _save_curves(rows, out_dir / f"{stem}_curves_partial.json")
    if not smoke:
        save_rows([_flat(r) for r in rows], stem, out_dir)
        _save_curves(rows, out_dir / f"{stem}_curves.json")
        summarize(rows, config, out_dir / f"{stem}_summary.md")
        plot(rows, config, out_dir / f"{stem}.png")
    return rows


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "curve"}


def _save_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            [{"method": r["method"], "seed": r["seed"], "curve": r["curve"]} for r in rows], f
        )


def metric_label(config: dict[str, Any]) -> str:
    kind = config["experiment"]
    if kind == "parkinsons":
        return "test MAE total_UPDRS"
    if kind == "qm9":
        return f"test MAE {config['primary']}" + (
            " (meV)" if config["primary"] in QM9_ENERGIES else ""
        )
    return "test acc left digit (%)"


def summarize(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> str:
    """Markdown table: mean ± std over seeds, the paired difference to primary-only, aux loss, time;
    with a validation set also the test metric at the best validation step (early stopping)."""
    kind = config["experiment"]
    metric = metric_label(config)
    mult = 1.0 if kind in REGRESSION else 100.0
    early = all("test_metric_at_best_val" in r for r in rows)

    def stat(rs: list[dict[str, Any]], key: str) -> str:
        m = np.array([r[key] for r in rs]) * mult
        base = {r["seed"]: r[key] for r in rows if r["method"] == "primary-only"}
        d = [mult * (r[key] - base[r["seed"]]) for r in rs if r["seed"] in base]
        dtxt = f"{np.mean(d):+.3f}" + (f" ± {np.std(d):.3f}" if len(d) > 1 else "") if d else "—"
        return f"{m.mean():.3f} ± {m.std():.3f} | {dtxt}"

    head = f"| method | {metric} | Δ vs primary-only (paired) | "
    if early:
        head += f"{metric}, early-stopped on validation | Δ vs primary-only (paired) | "
    lines = [
        head
        + "train aux loss first → min → last | max aux rise | steps with ⟨g_aux,u⟩<0 "
        + "| mean w_aux | ms/step |",
        "|---" * (head.count("|") + 5 - 1) + "|",
    ]
    for spec in config["methods"]:
        rs = [r for r in rows if r["method"] == spec["label"]]
        if not rs:
            continue

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[key] for r in rs]))

        cells = stat(rs, "test_metric") + (
            " | " + stat(rs, "test_metric_at_best_val") if early else ""
        )
        lines.append(
            f"| {spec['label']} | {cells} | "
            f"{mean('train_aux_first'):.3f} → {mean('train_aux_min'):.3f} → "
            f"{mean('train_aux_last'):.3f} | "
            f"{mean('train_aux_max_rise'):.3f} | {100 * mean('frac_aux_raised'):.0f}% | "
            f"{mean('aux_weight_mean'):.2f} | "
            f"{mean('ms_per_step'):.2f} |"
        )
    text = (
        f"{len({r['seed'] for r in rows})} seed(s), {rows[0]['steps']} steps\n\n"
        + "\n".join(lines)
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def merge_summaries(config: dict[str, Any], paths: list[Path], out: Path) -> str:
    """One summary table from the saved rows of several runs of ``config`` (e.g. seeds run as
    separate jobs); a (method, seed) pair found in two files is an error, not silently doubled."""
    import json

    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], Path] = {}
    for path in paths:
        for r in json.loads(path.read_text()):
            key = (r["method"], r["seed"])
            if key in seen:
                raise ValueError(f"{key} is in both {seen[key]} and {path}: merge each run once.")
            seen[key] = path
            rows.append(r)
    if not rows:
        raise ValueError(f"no rows in {[str(p) for p in paths]}.")
    return summarize(rows, config, out)


def plot(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> None:
    """Left: training aux loss over steps (mean over seeds); middle: primary test metric over
    steps; right: final primary metric vs ms/step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = config["experiment"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for spec in config["methods"]:
        rs = [r for r in rows if r["method"] == spec["label"]]
        if not rs:
            continue
        steps = [c["step"] for c in rs[0]["curve"]]
        aux = np.mean([[c["train_aux"] for c in r["curve"]] for r in rs], 0)
        met = np.mean([[c["test_metric"] for c in r["curve"]] for r in rs], 0)
        style = "-" if spec["name"] == "primary-aux" else "--"
        axes[0].plot(steps, aux, style, label=spec["label"])
        axes[1].plot(steps, met, style, label=spec["label"])
        axes[2].scatter(
            [np.mean([r["ms_per_step"] for r in rs])],
            [np.mean([r["test_metric"] for r in rs])],
            label=spec["label"],
        )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("auxiliary training loss (monitor subset)")
    axes[0].set_title(f"{kind}: auxiliary loss over training")
    ylab = metric_label(config)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(ylab)
    axes[1].set_title("primary metric over training")
    axes[2].set_xlabel("ms per step")
    axes[2].set_ylabel(ylab)
    axes[2].set_title("final primary metric vs cost")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=str(CONFIGS / "parkinsons.json"))
    ap.add_argument("--seeds", type=int, nargs="*", help="override the config's seeds")
    ap.add_argument("--methods", nargs="*", help="run only the config's methods with these labels")
    ap.add_argument(
        "--name",
        help="output stem (default: the config's name, plus _seeds<…> when --seeds is given)",
    )
    ap.add_argument(
        "--timing",
        action="store_true",
        help="only the interleaved ms/step comparison (time_methods)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="ROWS_JSON",
        help=(
            "run nothing: summarize the rows of earlier runs of this config (e.g. one file per "
            "seed) together"
        ),
    )
    args = ap.parse_args()
    config = load_config(args.config)
    if args.merge:
        print(
            merge_summaries(
                config,
                [Path(p) for p in args.merge],
                OUT / f"{args.name or config.get('name', 'aux')}_merged_summary.md",
            )
        )
        return
    if args.methods:
        labels = [m["label"] for m in config["methods"]]
        unknown = sorted(set(args.methods) - set(labels))
        if unknown:
            raise SystemExit(
                f"--methods: {unknown} are not labels of {args.config}; its labels are {labels}"
            )
        config["methods"] = [m for m in config["methods"] if m["label"] in args.methods]
    if args.timing:
        import json

        data = _load(config)
        kind = config["experiment"]
        split = make_split(kind, data, config, 0)
        ms = time_methods(kind, split, config, **config.get("timing", {}))
        base = ms.get("primary-only", float("nan"))
        for k, v in ms.items():
            print(f"| {k} | {v:.2f} | {v / base:.2f}× |")
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"{config.get('name', 'aux')}_timing.json", "w") as f:
            json.dump({"ms_per_step_median": ms, "protocol": config.get("timing", {})}, f, indent=1)
        return
    if args.seeds:
        config["seeds"] = args.seeds
        config["name"] = f"{config.get('name', 'aux')}_seeds{'-'.join(map(str, args.seeds))}"
    if args.name:
        config["name"] = args.name
    t = time.perf_counter()
    rows = run(config)
    print(summarize(rows, config, OUT / f"{config.get('name', 'aux')}_summary.md"))
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
