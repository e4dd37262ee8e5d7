"""Auxiliary-task experiments: each config runs one batch on generated data, and PrimaryAux's
update never raises the auxiliary loss to first order on a tiny problem with a real conflict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import taskgrad
from benchmarks.applications import aux_tasks
from taskgrad.methods import get

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "benchmarks" / "applications"
CONFIGS = sorted((APPS / "configs" / "aux_tasks").glob("*.json"))


A = aux_tasks


def test_configs_exist() -> None:
    assert {p.stem for p in CONFIGS} >= {"parkinsons", "multimnist", "qm9_mu", "qm9_gap", "qm9_U0"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_one_batch(path: Path) -> None:
    """One step per method on tiny generated data (never the real data)."""
    config = json.loads(path.read_text())
    kind = config["experiment"]
    data = {"parkinsons": A.fake_parkinsons, "qm9": A.fake_qm9}.get(
        kind, lambda: A.fake_multimnist(64, 16)
    )()
    config = {**config, "batch_size": 16, "n_monitor": 32}
    if kind == "qm9":
        config = {**config, "n_train": 64, "n_test": 32, "hidden": 16, "n_layers": 1}
    rows = A.run(config, data=data, smoke=True, progress=False)
    assert [r["method"] for r in rows] == [m["label"] for m in config["methods"]]
    for r, spec in zip(rows, config["methods"], strict=True):
        assert r["steps"] == 1 and np.isfinite(r["test_metric"]) and r["ms_per_step"] > 0
        assert len(r["curve"]) == 2 and all(np.isfinite(c["train_aux"]) for c in r["curve"])
        if spec["name"] == "primary-only":
            assert r["aux_weight_mean"] == 0.0
        if spec["name"] == "sum":  # the total auxiliary weight: 1 per auxiliary task
            assert r["aux_weight_mean"] == (10.0 if kind == "qm9" else 1.0)
        if config["experiment"] == "multimnist":
            assert 0.0 <= r["test_metric"] <= 1.0


def test_parkinsons_split_is_by_patient_and_standardized() -> None:
    data = A.fake_parkinsons(n_patients=7, per_patient=11)
    data.tasks[3] = (data.tasks[3][0][:5], data.tasks[3][1][:5])  # one patient with fewer rows
    s = A.parkinsons_split(data, n_test_patients=2, seed=4)
    test_ids = np.random.default_rng(4).permutation(7)[:2]
    assert s.xt.shape[0] == sum(data.tasks[i][0].shape[0] for i in test_ids)
    assert s.x.shape[0] + s.xt.shape[0] == data.n_samples
    assert torch.allclose(s.x.mean(0), torch.zeros(s.x.shape[1]), atol=1e-5)
    assert torch.allclose(s.y.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    # column 0 of y is total_UPDRS whatever the loader's column order
    total = np.concatenate([data.tasks[i][1][:, 1] for i in range(7) if i not in test_ids])
    assert s.scale == pytest.approx(total.std())
    single = A.TaskData(
        [(x, y[:, 0]) for x, y in data.tasks], data.feature_names, ["total_UPDRS"], data.task_ids
    )
    with pytest.raises(ValueError, match="target='both'"):
        A.parkinsons_split(single, 2, 0)


def test_parkinsons_validation_patients_are_disjoint_and_optional() -> None:
    data = A.fake_parkinsons(n_patients=9, per_patient=6)
    base = A.parkinsons_split(data, n_test_patients=2, seed=3)
    assert base.xv is None and base.yv is None
    s = A.parkinsons_split(data, n_test_patients=2, seed=3, n_val_patients=3)
    perm = np.random.default_rng(3).permutation(9)
    assert (
        s.xt.shape == base.xt.shape
    )  # the same test patients (standardized with other statistics)
    assert s.xt.shape[0] == sum(data.tasks[i][0].shape[0] for i in perm[:2])
    assert s.xv.shape[0] == sum(data.tasks[i][0].shape[0] for i in perm[2:5])
    assert s.x.shape[0] + s.xv.shape[0] + s.xt.shape[0] == data.n_samples
    rows = {tuple(r) for r in np.round(s.x.numpy(), 5)}
    assert not rows & {tuple(r) for r in np.round(s.xv.numpy(), 5)}
    with pytest.raises(ValueError, match="n_val_patients"):
        A.parkinsons_split(data, 2, 0, n_val_patients=7)


def test_parkinsons_time_split_keeps_each_patients_order() -> None:
    data = A.fake_parkinsons(n_patients=4, per_patient=20)
    s = A.parkinsons_time_split(data, test_frac=0.25, val_frac=0.2)
    assert (s.x.shape[0], s.xv.shape[0], s.xt.shape[0]) == (4 * 11, 4 * 4, 4 * 5)
    assert s.x.shape[1] == len(data.feature_names) - 1  # test_time used for the order, then dropped
    for x, _ in data.tasks:  # every test visit is later than every training or validation visit
        t = np.sort(x[:, -1])
        assert t[-5:].min() >= t[:15].max()
    # the test rows are exactly each patient's last five visits (compare the unstandardized targets)
    last = np.concatenate([y[np.argsort(x[:, -1])[-5:]][:, 1] for x, y in data.tasks])
    train_total = np.concatenate([y[np.argsort(x[:, -1])[:11]][:, 1] for x, y in data.tasks])
    np.testing.assert_allclose(
        s.yt[:, 0].numpy(), (last - train_total.mean()) / train_total.std(), rtol=1e-4, atol=1e-5
    )
    assert A.parkinsons_time_split(data, 0.25, 0.0).xv is None
    with pytest.raises(ValueError, match="drop=\\(\\)"):
        A.parkinsons_time_split(
            A.TaskData(data.tasks, [f"f{i}" for i in range(19)], data.target_names, data.task_ids)
        )
    with pytest.raises(ValueError, match="test_frac"):
        A.parkinsons_time_split(data, 0.7, 0.3)


def test_early_stopping_reads_the_test_metric_at_the_best_validation_step(tmp_path: Path) -> None:
    config = json.loads((APPS / "configs" / "aux_tasks" / "parkinsons.json").read_text())
    methods = config["methods"][:1] + [m for m in config["methods"] if m["name"] == "primary-only"]
    config = {
        **config,
        "n_test_patients": 3,
        "n_val_patients": 3,
        "batch_size": 16,
        "n_monitor": 32,
        "steps": 12,
        "eval_every": 3,
        "methods": methods,
    }
    rows = A.run(
        config,
        data=A.fake_parkinsons(n_patients=10, per_patient=10),
        out_dir=tmp_path,
        progress=False,
    )
    for r in rows:
        best = min(r["curve"], key=lambda c: c["val_metric"])
        assert (
            r["best_val_step"] == best["step"]
            and r["test_metric_at_best_val"] == best["test_metric"]
        )
        assert len(r["curve"]) == 5
    summary = (tmp_path / f"{config['name']}_summary.md").read_text()
    assert "early-stopped on validation" in summary and summary.count("| primary-only |") == 1


def _conflicting_problem(seed: int):
    """A small shared MLP whose auxiliary target is the negated primary: their encoder gradients
    conflict.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g)
    y0 = x @ torch.randn(5, generator=g)
    y = torch.stack([y0, -y0 + 0.3 * torch.randn(32, generator=g)], 1)
    torch.manual_seed(seed)
    model = A.TwoHeadMLP(5, hidden=8, depth=2)
    model.heads[1].load_state_dict(model.heads[0].state_dict())  # same head, opposite targets
    return model, x, y


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_primary_aux_never_raises_the_aux_loss_to_first_order(seed: int) -> None:
    """⟨g_aux, −u⟩ ≤ 0 at every step (u the filled .grad, all parameters), while the plain
    primary gradient does conflict with the auxiliary on this problem (so the check has teeth)."""
    model, x, y = _conflicting_problem(seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    method = get("primary-aux")
    conflicts = 0
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        _, outs = model(x)
        losses = A.task_losses("parkinsons", outs, y)
        g_aux = _flat(
            torch.autograd.grad(
                losses[1], params, retain_graph=True, allow_unused=True, materialize_grads=True
            )
        )
        g_pri = _flat(
            torch.autograd.grad(
                losses[0], params, retain_graph=True, allow_unused=True, materialize_grads=True
            )
        )
        taskgrad.backward(losses, method=method)
        u = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        conflicts += int(float(g_aux @ g_pri) < 0)
        assert float(g_aux @ -u) <= 1e-6 * float(g_aux.norm() * u.norm()) + 1e-12
        opt.step()
    assert conflicts > 0, (
        "the problem was meant to make the primary and auxiliary gradients conflict"
    )


def test_margin_and_representation_constraints_hold() -> None:
    """Robust margin: ⟨g_aux, u⟩ ≥ m‖g_aux‖‖u‖ on the shared (Gram) parameters; the representation
    source: (G w)_aux = ⟨∂L_aux/∂z, ∂(Σ wᵢLᵢ)/∂z⟩ ≥ 0 in z-space."""
    model, x, y = _conflicting_problem(5)
    shared = list(model.encoder.parameters())
    for _ in range(5):
        model.zero_grad(set_to_none=True)
        _, outs = model(x)
        losses = A.task_losses("parkinsons", outs, y)
        g_aux = _flat(torch.autograd.grad(losses[1], shared, retain_graph=True))
        taskgrad.backward(losses, method=get("primary-aux", margin=0.05, relative_margin=True))
        u = _flat([p.grad for p in shared])
        if float(u.norm()) > 0:
            assert float(g_aux @ u) >= 0.05 * float(g_aux.norm() * u.norm()) * (1 - 1e-4) - 1e-10
        model.zero_grad(set_to_none=True)
        z, outs = model(x)
        res = taskgrad.backward(
            A.task_losses("parkinsons", outs, y), method=get("primary-aux"), features=z
        )
        assert float((res.gram @ res.weights.to(res.gram.dtype))[1]) >= -1e-8 * float(
            res.gram.diagonal().max()
        )
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad


@pytest.mark.slow
def test_merge_summaries_joins_seed_files_and_refuses_duplicates(tmp_path: Path) -> None:
    config = json.loads((APPS / "configs" / "aux_tasks" / "parkinsons.json").read_text())
    config = {
        **config,
        "n_test_patients": 2,
        "n_val_patients": 0,
        "batch_size": 16,
        "n_monitor": 32,
        "steps": 2,
        "eval_every": 1,
        "methods": [m for m in config["methods"] if m["name"] in ("primary-only", "sum")],
    }
    data = A.fake_parkinsons()
    files = []
    for seed in (0, 1):
        run_dir = tmp_path / f"s{seed}"
        A.run({**config, "seeds": [seed]}, data=data, out_dir=run_dir, progress=False)
        files.append(run_dir / f"{config['name']}.json")
    text = A.merge_summaries(config, files, tmp_path / "merged.md")
    assert text.startswith("2 seed(s)") and text.count("| sum |") == 1
    with pytest.raises(ValueError, match="merge each run once"):
        A.merge_summaries(config, [files[0], files[0]], tmp_path / "dup.md")
