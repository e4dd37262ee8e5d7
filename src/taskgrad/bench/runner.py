"""Train one run of a config, with checkpoints, per-epoch evaluation and saved results.

Files in ``OUT/<experiment>/<label>/seed<s>/``: ``checkpoint.pt`` (model, optimizer, method state,
LR scheduler, RNG state, position in the epoch, history, best-so-far selection; written every
``checkpoint_every`` steps and at each epoch end), ``history.csv`` (one row per epoch: lr, training
losses and weights, test metrics, validation metrics ``val/<key>`` and losses ``val_loss/<task>``,
the selection score ``val_score`` and ``selected`` = 1 on the best epoch so far), ``best_model.pt``
(the model of the selected epoch, when the criterion is not ``"last"``) and ``result.json`` (config,
selected and last metrics, history, selection, timings; written when the run completes). ``final``
in result.json holds the test metrics of the selected epoch (the last one for ``"last"``).
Starting a run whose folder holds a checkpoint of the same config resumes from it: the data order
of epoch e is a function of (seed, e), so the resumed run takes the same steps as an uninterrupted one.
A saved result is reused only when its config fingerprint is that of the run: a result of another
config (the config file changed since) is recomputed, and says so and why: a ``StaleResultWarning``
(also with ``show_progress=False`` / ``--quiet``) and a line of the progress output. A
checkpoint of another config stops the run, unless it is the end of that stale finished run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import methods as _methods
from ..methods.base import Weighting
from ..training import GradStep, TaskOptimizer
from .config import RunConfig, single_task_config
from .problems import Problem, get_problem, seed_everything, split_evaluator
from .schedulers import build_scheduler, step_scheduler
from .validation import Selector, carve_validation

__all__ = ["OneTask", "StaleResultWarning", "build_method", "order_runs", "run", "run_all", "single_task_val_baseline"]


class StaleResultWarning(UserWarning):
    """A saved ``result.json`` of another config than the run's is being recomputed (overwritten)."""


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


def _validation(problem: Problem, cfg: RunConfig) -> tuple[Tensor | None, str | None, Tensor | None, str]:
    """(training rows or None for all, validation split name, validation rows or None, source)."""
    if cfg.val_fraction > 0:
        train_idx, val_idx = carve_validation(problem.n("train"), cfg.val_fraction, cfg.seed)
        return train_idx, "train", val_idx, f"{cfg.val_fraction:g} of the training set, carved by seed"
    if problem.has_split("val"):
        return None, "val", None, "the data set's validation split"
    return None, None, None, "none"


def _note(message: str, show: bool) -> None:
    """One line of progress output (nothing when ``show`` is False)."""
    if show:
        from rich.console import Console

        Console().print(message, markup=False, highlight=False, soft_wrap=True)


def _config_changes(saved: dict[str, Any], cfg: RunConfig) -> str:
    """What differs between a saved run's config and ``cfg`` ("epochs 2 → 3, ..."), ``device`` aside."""
    def canon(v: Any) -> str:  # as saved in result.json (tuples become lists)
        return json.dumps(v, sort_keys=True, default=str)

    diff = [f"{k} {saved.get(k, '(absent)')!r} → {v!r}" for k, v in cfg.to_dict().items()
            if k != "device" and canon(saved.get(k)) != canon(v)]
    return ", ".join(diff) or "the same fields, an older fingerprint rule"


def _stale_result(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The saved result at ``path`` when it is of another config than ``cfg`` (else None)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return None if saved.get("fingerprint") == cfg.fingerprint() else saved


def single_task_val_baseline(out_dir: str | Path, cfg: RunConfig, tasks: list[str], keys: list[str]) -> dict[str, float]:
    """Validation metrics of the single-task runs of ``cfg``'s experiment and seed at their selected
    epochs ({key: value} for the metrics ``keys``, each from the run of its task). Each saved run must
    be ``single_task_config(cfg, i, task)`` (same config fingerprint): another one is an error."""
    base: dict[str, float] = {}
    for i, t in enumerate(tasks):
        st_cfg = single_task_config(cfg, i, t)
        path = Path(out_dir) / st_cfg.run_id / "result.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{cfg.run_id} selects by validation Δm against the single-task runs, but {path} does not exist: "
                "run the single-task baselines first (`taskgrad bench` does), or give a fixed [baseline].")
        r = json.loads(path.read_text())
        if r.get("fingerprint") != st_cfg.fingerprint():
            raise RuntimeError(
                f"{path} was trained with another config than the single-task baseline of {cfg.run_id} "
                f"({_config_changes(r.get('config', {}), st_cfg)}): its validation metrics are no baseline. "
                "Run it again (`run` / `taskgrad bench` recompute a stale run).")
        val = (r.get("selection") or {}).get("val") or {}
        for k in keys:
            if k.split("/", 1)[0] == t:
                if k not in val:
                    raise RuntimeError(f"{path} has no validation metric {k!r} (trained without a validation split?).")
                base[k] = float(val[k])
    return base


def _delta_m_baseline(cfg: RunConfig, out_dir: str | Path, tasks: list[str], keys: list[str],
                      explicit: dict[str, float] | None, saved: dict[str, float] | None,
                      resume: bool, show_progress: bool) -> dict[str, float]:
    """The Δm baseline of a multi-task ``delta_m`` run. Resuming (``saved``: the checkpoint's): the
    saved one, which scored the finished epochs; an ``explicit`` one that differs is an error. Else
    ``explicit``, the config's fixed [baseline], or the single-task runs' (stale ones recomputed)."""
    if saved is not None:
        if explicit is not None and {k: float(v) for k, v in explicit.items()} != saved:
            raise ValueError(
                f"{cfg.run_id}: val_baseline={dict(explicit)} differs from the Δm baseline {saved} that scored the "
                "epochs of its checkpoint (and chose the best epoch so far). To resume, pass val_baseline=None or "
                "those values; to select against the new baseline, start the run over (resume=False, "
                "`taskgrad bench --restart`, or another out_dir).")
        return saved
    if explicit is not None:
        return {k: float(v) for k, v in explicit.items()}
    if cfg.selection.get("baseline") is not None:
        return dict(cfg.selection["baseline"])
    for i, t in enumerate(tasks):
        st_cfg = single_task_config(cfg, i, t)
        if _stale_result(Path(out_dir) / st_cfg.run_id / "result.json", st_cfg) is not None:
            run(st_cfg, out_dir, resume=resume, show_progress=show_progress)  # says it recomputes, and why
    return single_task_val_baseline(out_dir, cfg, tasks, keys)


def run(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    val_baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (or resume it, or return its saved result) and return the result dict.

    A saved ``result.json`` is returned only when its config fingerprint is ``cfg``'s; one of another
    config is recomputed, with a ``StaleResultWarning`` saying which fields changed (always, so a
    quiet run shows it too) and the same note in the progress output.
    ``on_step(global_step)`` is called after every optimizer step (tests use it to interrupt).
    ``val_baseline`` ({metric: value}) overrides the single-task validation metrics used by the
    ``delta_m`` selection criterion (by default: the config's fixed [baseline], else the saved
    single-task runs of the same experiment and seed under ``out_dir``; stale ones are recomputed).
    Resuming keeps the baseline its checkpoint was scored against: a ``val_baseline`` that differs
    from it is a ``ValueError`` (the finished epochs and the best-so-far model were chosen with the
    old one); start over with ``resume=False`` to select against a new baseline.
    """
    run_dir = Path(out_dir) / cfg.run_id
    result_path, ckpt_path, best_path = run_dir / "result.json", run_dir / "checkpoint.pt", run_dir / "best_model.pt"
    fp = cfg.fingerprint()
    stale_fp: str | None = None  # fingerprint of a finished run of another config in this folder
    if resume and result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved.get("fingerprint") == fp:
            return saved
        stale_fp = saved.get("fingerprint")
        msg = (f"{cfg.run_id}: the saved result.json is of another config "
               f"({_config_changes(saved.get('config', {}), cfg)}): recomputing.")
        warnings.warn(msg, StaleResultWarning, stacklevel=2)  # shown with progress output off too
        _note(msg, show_progress)
    device = _device(cfg.device)
    problem = get_problem(cfg.dataset, **cfg.data).to(device)
    train_idx, val_split, val_idx, val_source = _validation(problem, cfg)
    crit = cfg.selection.get("criterion", "last")
    monitor = cfg.scheduler.get("monitor") if cfg.scheduler.get("name") == "plateau" else None
    if val_split is None and (crit != "last" or monitor == "val_loss"):
        what = f"[selection] criterion = {crit!r}" if crit != "last" else "[scheduler] monitor = 'val_loss'"
        raise ValueError(f"{cfg.run_id}: {what} needs a validation split, and dataset {cfg.dataset!r} has none: "
                         "set val_fraction (e.g. 0.1) in the config.")
    evaluate_val = None if val_split is None else split_evaluator(problem, val_split, val_idx)  # signature errors now
    specs = {m.key: m.higher_is_better for m in problem.metrics}
    k = len(problem.tasks)
    st = cfg.single_task_index
    ck: dict[str, Any] | None = None
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["fingerprint"] != fp:
            if stale_fp is None or ck["fingerprint"] != stale_fp:
                raise RuntimeError(
                    f"{ckpt_path} belongs to a different config (fingerprint {ck['fingerprint']} ≠ {fp}); "
                    "delete that folder or write to another --out."
                )
            ck = None  # the last checkpoint of the stale finished run: start over
    saved_selection = None if ck is None else ck["state"].get("selection")
    if crit == "delta_m" and st is None:  # before seeding: recomputing a baseline run draws random numbers
        val_baseline = _delta_m_baseline(cfg, out_dir, list(problem.tasks), list(specs), val_baseline,
                                         None if saved_selection is None else dict(saved_selection["baseline"]),
                                         resume, show_progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ck is None:
        best_path.unlink(missing_ok=True)  # a fresh start: a best model here is another run's
    seed_everything(cfg.seed)
    model = problem.make_model(**cfg.model).to(device)
    method = build_method(cfg)
    opt = _optimizer(model.parameters(), cfg.optimizer)
    scheduler = build_scheduler(opt, cfg.scheduler)
    topt = TaskOptimizer(opt, GradStep(method, source=cfg.source))
    n_train = problem.n("train") if train_idx is None else len(train_idx)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
                             "epoch_stats": None, "step_times": [], "resumed": 0, "selection": None}
    if ck is not None:
        model.load_state_dict(ck["model"])
        topt.load_state_dict(ck["topt"])
        if scheduler is not None:
            scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"])
        state = ck["state"]
        state.setdefault("selection", None)
        state["resumed"] += 1
    selector = Selector(crit, specs, list(problem.tasks), metric=cfg.selection.get("metric"), single_task=st,
                        baseline=val_baseline if state["selection"] is None else state["selection"]["baseline"])
    if state["selection"] is not None:
        selector.load_state_dict(state["selection"])

    def save_checkpoint() -> None:
        state["selection"] = selector.state_dict()
        _atomic_save({
            "fingerprint": fp, "model": model.state_dict(), "topt": topt.state_dict(), "state": state,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        }, ckpt_path)

    def task_mean(values: list[float]) -> float:
        return float(values[st]) if st is not None else sum(values) / len(values)

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
                if train_idx is not None:
                    idx = train_idx[idx]
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
                                   "skipped": stats["skipped"], "lr": float(opt.param_groups[0]["lr"])}
            for i, t in enumerate(problem.tasks):
                row[f"train_loss/{t}"] = stats["loss_sum"][i] / n_steps
                row[f"weight/{t}"] = stats["w_sum"][i] / applied
            row.update(metrics)
            val_metrics: dict[str, float] = {}
            val_losses: list[float] | None = None
            if evaluate_val is not None:  # metrics and losses from one pass (see split_evaluator)
                val_metrics, val_losses = evaluate_val(model, cfg.eval_batch_size)
                row.update({f"val/{key}": v for key, v in val_metrics.items()})
                row.update({f"val_loss/{t}": v for t, v in zip(problem.tasks, val_losses)})
                row["val_loss"] = task_mean(val_losses)
            score = selector.score(val_metrics, val_losses)
            if score is not None:
                row["val_score"] = score
            improved = selector.update(epoch + 1, score)
            if improved and selector.needs_validation:
                _atomic_save(model.state_dict(), best_path)
            state["history"].append(row)
            for r in state["history"]:  # 1 on the best epoch so far
                r["selected"] = int(r["epoch"] == selector.best_epoch)
            if monitor is not None:
                train_loss = task_mean([row[f"train_loss/{t}"] for t in problem.tasks])
                step_scheduler(scheduler, {"val_loss": row.get("val_loss"), "criterion": score,
                                           "train_loss": train_loss}[monitor])
            else:
                step_scheduler(scheduler, None)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["epoch_stats"] = None
            save_checkpoint()
            _write_history_csv(run_dir / "history.csv", state["history"])
            if show_progress:
                progress.console.print(
                    f"[bold]{cfg.run_id}[/] epoch {epoch + 1}/{cfg.epochs} (lr {row['lr']:.3g}): "
                    + ", ".join(f"{m.key}={metrics[m.key]:.4f}" for m in problem.metrics)
                    + (f"; validation {crit} {score:.4f}" + (" (best)" if improved else f" (best: epoch {selector.best_epoch})")
                       if score is not None else "")
                )
    times = torch.tensor(state["step_times"], dtype=torch.float64)
    hist = state["history"]
    best = selector.best_epoch or len(hist)
    sel_row = hist[best - 1] if hist else {}
    selection = {
        "criterion": crit, "metric": selector.metric, "epoch": best, "score": selector.best_score,
        "val": {key: sel_row[f"val/{key}"] for key in specs if f"val/{key}" in sel_row},
        "baseline": selector.baseline or None, "validation": val_source,
        "n_val": 0 if val_split is None else (len(val_idx) if val_idx is not None else problem.n(val_split)),
    }
    # the first steps include warm-up (allocations, solver compilation): report the median
    result = {
        "fingerprint": fp,
        "config": cfg.to_dict(),
        "run_id": cfg.run_id,
        "tasks": list(problem.tasks),
        "metric_specs": [{"key": m.key, "task": m.task, "name": m.name, "higher_is_better": m.higher_is_better}
                         for m in problem.metrics],
        "final": sel_row,
        "last": hist[-1] if hist else {},
        "selection": selection,
        "history": hist,
        "time_per_step_s": float(times.median()) if times.numel() else float("nan"),
        "time_per_epoch_s": float(sum(r["train_time_s"] for r in hist) / max(len(hist), 1)),
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "resumed": state["resumed"],
        "torch": torch.__version__,
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def order_runs(cfgs: list[RunConfig]) -> list[RunConfig]:
    """Single-task baselines first (their validation metrics are the ``delta_m`` selection baseline),
    otherwise in the given order."""
    return [c for c in cfgs if c.is_single_task] + [c for c in cfgs if not c.is_single_task]


def run_all(cfgs: list[RunConfig], out_dir: str | Path, *, resume: bool = True, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every config, single-task baselines first (each resumes or is skipped when complete);
    the results come back in the order of ``cfgs``."""
    done = {id(c): run(c, out_dir, resume=resume, show_progress=show_progress) for c in order_runs(cfgs)}
    return [done[id(c)] for c in cfgs]
