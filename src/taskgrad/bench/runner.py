"""Train one run of a config, with checkpoints, per-epoch evaluation and saved results.

Files in ``OUT/<experiment>/<label>/seed<s>/``: ``checkpoint.pt`` (model, optimizer, method state,
RNG state, position in the epoch, history; written every ``checkpoint_every`` steps and at each
epoch end), ``history.csv`` (one row per epoch), ``result.json`` (config, final metrics, history,
timings; written when the run completes). Starting a run whose folder holds a checkpoint of the
same config resumes from it: the data order of epoch e is a function of (seed, e), so the resumed
run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import methods as _methods
from ..methods.base import Weighting
from ..training import GradStep, TaskOptimizer
from .config import RunConfig
from .problems import get_problem, seed_everything

__all__ = ["OneTask", "build_method", "run", "run_all"]


class OneTask(Weighting):
    """Single-task baseline: w = e_i (only task i is trained)."""

    needs = frozenset({"losses"})

    def __init__(self, index: int) -> None:
        if index < 0:
            raise ValueError(f"task index must be ≥ 0, got {index}.")
        self.index = index

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        if self.index >= losses.shape[-1]:
            raise ValueError(f"single-task index {self.index} but there are {losses.shape[-1]} tasks.")
        w = torch.zeros_like(losses)
        w[..., self.index] = 1.0
        return w


def build_method(cfg: RunConfig) -> Weighting:
    """The run's method: ``single-task:<i>`` or a registry name with ``method_kwargs``."""
    if cfg.is_single_task:
        return OneTask(int(cfg.method.split(":", 1)[1]))
    return _methods.get(cfg.method, **cfg.method_kwargs)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device = 'cpu' or 'auto'.")
    return torch.device(name)


def _optimizer(params: Any, spec: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr = spec["name"], float(spec["lr"])
    wd = float(spec.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(spec.get("momentum", 0.0)))


def _perm(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
    return torch.randperm(n, generator=g)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(history)


def run(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (or resume it, or return its saved result) and return the result dict.

    ``on_step(global_step)`` is called after every optimizer step (tests use it to interrupt).
    """
    run_dir = Path(out_dir) / cfg.run_id
    result_path, ckpt_path = run_dir / "result.json", run_dir / "checkpoint.pt"
    fp = cfg.fingerprint()
    if resume and result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved.get("fingerprint") == fp:
            return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    problem = get_problem(cfg.dataset, **cfg.data).to(device)
    seed_everything(cfg.seed)
    model = problem.make_model(**cfg.model).to(device)
    method = build_method(cfg)
    topt = TaskOptimizer(_optimizer(model.parameters(), cfg.optimizer), GradStep(method, source=cfg.source))
    n_train = problem.n("train")
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
                             "epoch_stats": None, "step_times": [], "resumed": 0}
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["fingerprint"] != fp:
            raise RuntimeError(
                f"{ckpt_path} belongs to a different config (fingerprint {ck['fingerprint']} ≠ {fp}); "
                "delete that folder or write to another --out."
            )
        model.load_state_dict(ck["model"])
        topt.load_state_dict(ck["topt"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"])
        state = ck["state"]
        state["resumed"] += 1

    def save_checkpoint() -> None:
        _atomic_save({
            "fingerprint": fp, "model": model.state_dict(), "topt": topt.state_dict(), "state": state,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        }, ckpt_path)

    k = len(problem.tasks)
    use_features = cfg.source in ("representation", "auto")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}")]
    with Progress(*cols, disable=not show_progress, transient=True) as progress:
        bar = progress.add_task(cfg.run_id, total=cfg.epochs * steps_per_epoch,
                                completed=state["epoch"] * steps_per_epoch + state["step_in_epoch"], info="")
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            if state["epoch_stats"] is None:
                state["epoch_stats"] = {"loss_sum": [0.0] * k, "w_sum": [0.0] * k, "steps": 0, "skipped": 0, "time": 0.0}
            stats = state["epoch_stats"]
            perm = _perm(cfg.seed, epoch, n_train)
            model.train()
            for b in range(state["step_in_epoch"], steps_per_epoch):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x, y = problem.batch(idx, "train")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                z, outs = model(x)
                losses = problem.losses(outs, y)
                res = topt.step(losses, features=z if use_features else None)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                stats["time"] += dt
                stats["steps"] += 1
                stats["skipped"] += int(res.skipped)
                for i in range(k):
                    stats["loss_sum"][i] += float(res.losses[i])
                    if not res.skipped:
                        stats["w_sum"][i] += float(res.weights[i])
                state["step_times"].append(dt)
                state["step_in_epoch"] = b + 1
                state["global_step"] += 1
                progress.update(bar, advance=1, info=" ".join(f"{float(v):.3f}" for v in res.losses))
                if state["global_step"] % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                    save_checkpoint()
                if on_step is not None:
                    on_step(state["global_step"])
            metrics = problem.evaluate(model, cfg.eval_batch_size)
            n_steps = max(stats["steps"], 1)
            applied = max(stats["steps"] - stats["skipped"], 1)
            row: dict[str, Any] = {"epoch": epoch + 1, "train_time_s": stats["time"], "steps": stats["steps"],
                                   "skipped": stats["skipped"]}
            for i, t in enumerate(problem.tasks):
                row[f"train_loss/{t}"] = stats["loss_sum"][i] / n_steps
                row[f"weight/{t}"] = stats["w_sum"][i] / applied
            row.update(metrics)
            state["history"].append(row)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["epoch_stats"] = None
            save_checkpoint()
            _write_history_csv(run_dir / "history.csv", state["history"])
            if show_progress:
                progress.console.print(
                    f"[bold]{cfg.run_id}[/] epoch {epoch + 1}/{cfg.epochs}: "
                    + ", ".join(f"{m.key}={metrics[m.key]:.4f}" for m in problem.metrics)
                )
    times = torch.tensor(state["step_times"], dtype=torch.float64)
    # the first steps include warm-up (allocations, solver compilation): report the median
    result = {
        "fingerprint": fp,
        "config": cfg.to_dict(),
        "run_id": cfg.run_id,
        "tasks": list(problem.tasks),
        "metric_specs": [{"key": m.key, "task": m.task, "name": m.name, "higher_is_better": m.higher_is_better}
                         for m in problem.metrics],
        "final": state["history"][-1] if state["history"] else {},
        "history": state["history"],
        "time_per_step_s": float(times.median()) if times.numel() else float("nan"),
        "time_per_epoch_s": float(sum(r["train_time_s"] for r in state["history"]) / max(len(state["history"]), 1)),
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "resumed": state["resumed"],
        "torch": torch.__version__,
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def run_all(cfgs: list[RunConfig], out_dir: str | Path, *, resume: bool = True, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every config in order (each resumes or is skipped when already complete)."""
    return [run(c, out_dir, resume=resume, show_progress=show_progress) for c in cfgs]
