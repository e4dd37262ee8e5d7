"""Train one run of a config, with checkpoints, per-epoch evaluation and saved results.

Files in ``OUT/<experiment>/<label>/seed<s>/`` (``:`` and other characters not allowed in file
names replaced by ``-``; a folder of an older version with the label unchanged is still read):
``checkpoint.pt`` (model, optimizer, method state,
LR scheduler, RNG state, position in the epoch, history, best-so-far selection; written every
``checkpoint_every`` steps and at each epoch end), ``history.csv`` (one row per epoch: lr, training
losses and weights, test metrics, validation metrics ``val/<key>`` and losses ``val_loss/<task>``,
the selection score ``val_score`` and ``selected`` = 1 on the best epoch so far), ``best_model.pt``
(the model of the selected epoch, when the criterion is not ``"last"``) and ``result.json`` (config,
selected and last metrics, history, selection, timings; written when the run completes). ``final``
in result.json holds the test metrics of the selected epoch (the last one for ``"last"``).
With ``label_fractions`` or ``label_counts`` in the config, or a problem whose training split is
natively partially labelled (``Problem.labelled``), each task's training loss is the mean over
the batch's rows labelled for it, and a task with no labelled row in a batch is absent from that
step (``present=`` of the training step: weight 0, left out of the Gram and the method; a
single-task baseline whose task is absent skips the step); ``history.csv`` then has
``absent/<task>`` (steps of the epoch without that task), ``train_loss/<task>`` averages the steps
where the task was present, and result.json has ``labels`` (seed, fractions, counts and the
labelled count of each task). Validation and test metrics are computed on fully labelled data.
With ``source = "sketch"`` each step also gets the batch's losses (the masked means, of the
present tasks) as a function of the model's parameters (:class:`~taskgrad.sources.ModuleLoss`),
whose r = 32 random directional derivatives estimate the Gram; a model whose losses that
function cannot reproduce (dropout in training mode) or push through forward-mode JVPs is a
``ValueError`` before the first step (and in :func:`check_run`).
Starting a run whose folder holds a checkpoint of the same config resumes from it: the data order
of epoch e is a function of (seed, e), so the resumed run takes the same steps as an uninterrupted
one.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..methods.base import Weighting
from ..sources import ModuleLoss
from ..sources.sketch import sketch_jacobian
from ..training import GradStep, StepResult, TaskOptimizer
from .config import RunConfig, single_task_config
from .labels import label_counts, training_label_mask
from .methods import OneTask, make_method
from .problem import Problem, split_evaluator
from .registry import get_problem
from .schedulers import build_scheduler, step_scheduler
from .validation import Selector, carve_validation

__all__ = [
    "OneTask",
    "StaleResultWarning",
    "build_method",
    "check_run",
    "order_runs",
    "run",
    "run_all",
    "run_dir",
    "seed_everything",
    "single_task_val_baseline",
]


class StaleResultWarning(UserWarning):
    """A saved ``result.json`` of another config than the run's is being recomputed
    (overwritten).
    """


def build_method(cfg: RunConfig) -> Weighting:
    """The run's method: ``single-task:<i>`` or a registry name with ``method_kwargs``."""
    return make_method(cfg.method, cfg.method_kwargs)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (Python's ``random`` is not used by the harness)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def run_dir(out_dir: str | Path, cfg: RunConfig) -> Path:
    """The folder of the run ``cfg`` under ``out_dir``: ``cfg.run_id``, or the folder an older
    version wrote (``cfg.legacy_run_id``, e.g. with ``single-task:left``) when only that one exists.
    """
    new, old = Path(out_dir) / cfg.run_id, Path(out_dir) / cfg.legacy_run_id
    return old if old != new and old.is_dir() and not new.exists() else new


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} requested but CUDA is not available; use device = 'cpu' or 'auto'."
        )
    return torch.device(name)


def _optimizer(params: Any, spec: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr = spec["name"], float(spec["lr"])
    wd = float(spec.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(
        params, lr=lr, weight_decay=wd, momentum=float(spec.get("momentum", 0.0))
    )


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


def _validation(
    problem: Problem, cfg: RunConfig
) -> tuple[Tensor | None, str | None, Tensor | None, str]:
    """(training rows or None for all, validation split name, validation rows or None, source)."""
    if cfg.val_fraction > 0:
        train_idx, val_idx = carve_validation(problem.n("train"), cfg.val_fraction, cfg.seed)
        return (
            train_idx,
            "train",
            val_idx,
            f"{cfg.val_fraction:g} of the training set, carved by seed",
        )
    if problem.has_split("val"):
        return None, "val", None, "the data set's validation split"
    return None, None, None, "none"


def _note(message: str, show: bool) -> None:
    """One line of progress output (nothing when ``show`` is False)."""
    if show:
        from rich.console import Console

        Console().print(message, markup=False, highlight=False, soft_wrap=True)


def _config_changes(saved: dict[str, Any], cfg: RunConfig) -> str:
    """What differs between a saved run's config and ``cfg`` ("epochs 2 → 3, ..."), ``device``
    aside.
    """

    def canon(v: Any) -> str:  # as saved in result.json (tuples become lists)
        return json.dumps(v, sort_keys=True, default=str)

    diff = [
        f"{k} {saved.get(k, '(absent)')!r} → {v!r}"
        for k, v in cfg.to_dict().items()
        if k != "device" and canon(saved.get(k)) != canon(v)
    ]
    return ", ".join(diff) or "the same fields, an older fingerprint rule"


def _stale_result(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The saved result at ``path`` when it is of another config than ``cfg`` (else None)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return None if saved.get("fingerprint") == cfg.fingerprint() else saved


def single_task_val_baseline(
    out_dir: str | Path, cfg: RunConfig, tasks: list[str], keys: list[str]
) -> dict[str, float]:
    """Validation metrics of the single-task runs of ``cfg``'s experiment and seed at their selected
    epochs ({key: value} for the metrics ``keys``, each from the run of its task). Each saved run
    must
    be ``single_task_config(cfg, i, task)`` (same config fingerprint): another one is an error.
    """
    base: dict[str, float] = {}
    for i, t in enumerate(tasks):
        st_cfg = single_task_config(cfg, i, t)
        path = run_dir(out_dir, st_cfg) / "result.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{cfg.run_id} selects by validation Δm against the single-task runs, but {path} "
                "does not exist: "
                "run the single-task baselines first (`taskgrad bench` does), or give a fixed "
                "[baseline]."
            )
        r = json.loads(path.read_text())
        if r.get("fingerprint") != st_cfg.fingerprint():
            raise RuntimeError(
                f"{path} was trained with another config than the single-task baseline of "
                f"{cfg.run_id} "
                f"({_config_changes(r.get('config', {}), st_cfg)}): its validation metrics are no "
                "baseline. "
                "Run it again (`run` / `taskgrad bench` recompute a stale run)."
            )
        val = (r.get("selection") or {}).get("val") or {}
        for k in keys:
            if k.split("/", 1)[0] == t:
                if k not in val:
                    raise RuntimeError(
                        f"{path} has no validation metric {k!r} (trained without a validation "
                        "split?)."
                    )
                base[k] = float(val[k])
    return base


def _delta_m_baseline(
    cfg: RunConfig,
    out_dir: str | Path,
    tasks: list[str],
    keys: list[str],
    explicit: dict[str, float] | None,
    saved: dict[str, float] | None,
    resume: bool,
    show_progress: bool,
) -> dict[str, float]:
    """The Δm baseline of a multi-task ``delta_m`` run. Resuming (``saved``: the checkpoint's): the
    saved one, which scored the finished epochs; an ``explicit`` one that differs is an error. Else
    ``explicit``, the config's fixed [baseline], or the single-task runs' (stale ones recomputed).
    """
    if saved is not None:
        if explicit is not None and {k: float(v) for k, v in explicit.items()} != saved:
            raise ValueError(
                f"{cfg.run_id}: val_baseline={dict(explicit)} differs from the Δm baseline {saved} "
                "that scored the "
                "epochs of its checkpoint (and chose the best epoch so far). To resume, pass "
                "val_baseline=None or "
                "those values; to select against the new baseline, start the run over "
                "(resume=False, "
                "`taskgrad bench --restart`, or another out_dir)."
            )
        return saved
    if explicit is not None:
        return {k: float(v) for k, v in explicit.items()}
    if cfg.selection.get("baseline") is not None:
        return dict(cfg.selection["baseline"])
    for i, t in enumerate(tasks):
        st_cfg = single_task_config(cfg, i, t)
        if _stale_result(run_dir(out_dir, st_cfg) / "result.json", st_cfg) is not None:
            run(
                st_cfg, out_dir, resume=resume, show_progress=show_progress
            )  # says it recomputes, and why
    return single_task_val_baseline(out_dir, cfg, tasks, keys)


@dataclass
class _Setup:
    """What a run needs before training: the problem on its device, the training rows, the
    validation split and its evaluator, and the selection and scheduler settings.
    """

    problem: Problem
    device: torch.device
    train_idx: Tensor | None
    val_split: str | None
    val_idx: Tensor | None
    val_source: str
    criterion: str
    monitor: str | None
    evaluate_val: Callable[[nn.Module, int], tuple[dict[str, float], list[float]]] | None
    labelled: Tensor | None = None  # (N_train, k) bool over the problem's training rows
    n_labelled: dict[str, int] = field(default_factory=dict)  # among the rows trained on

    @property
    def specs(self) -> dict[str, bool]:
        return {m.key: m.higher_is_better for m in self.problem.metrics}

    @property
    def n_train(self) -> int:
        return self.problem.n("train") if self.train_idx is None else len(self.train_idx)


def _setup(cfg: RunConfig) -> _Setup:
    """Build the problem and the validation split of ``cfg``; a missing validation split that the
    selection or the scheduler needs, or a problem that cannot evaluate it, is an error here.
    """
    device = _device(cfg.device)
    problem = get_problem(cfg.dataset, **cfg.data).to(device)
    train_idx, val_split, val_idx, val_source = _validation(problem, cfg)
    crit = cfg.selection.get("criterion", "last")
    monitor = cfg.scheduler.get("monitor") if cfg.scheduler.get("name") == "plateau" else None
    if val_split is None and (crit != "last" or monitor == "val_loss"):
        what = (
            f"[selection] criterion = {crit!r}"
            if crit != "last"
            else "[scheduler] monitor = 'val_loss'"
        )
        raise ValueError(
            f"{cfg.run_id}: {what} needs a validation split, and dataset {cfg.dataset!r} has none: "
            "set val_fraction (e.g. 0.1) in the config."
        )
    evaluate_val = None if val_split is None else split_evaluator(problem, val_split, val_idx)
    labelled = _label_mask(problem, cfg, train_idx, val_idx)
    n = problem.n("train")
    return _Setup(
        problem,
        device,
        train_idx,
        val_split,
        val_idx,
        val_source,
        crit,
        monitor,
        evaluate_val,
        labelled,
        label_counts(labelled, n, list(problem.tasks), train_idx),
    )


def _label_mask(
    problem: Problem, cfg: RunConfig, train_idx: Tensor | None, val_idx: Tensor | None
) -> Tensor | None:
    """The run's training label mask: the problem's native one with the config's label fractions
    drawn on top among the rows trained on (None: every example labelled for every task). A
    validation set carved from natively partially labelled rows is an error (validation metrics
    are computed on fully labelled data).
    """
    native = problem.label_mask()
    if native is not None and val_idx is not None:
        unlabelled = int((~native[val_idx.cpu()].all(1)).sum())
        if unlabelled:
            raise ValueError(
                f"{cfg.run_id}: val_fraction = {cfg.val_fraction:g} carves {unlabelled} training "
                f"examples without a label of some task of dataset {cfg.dataset!r} (natively "
                "partially labelled) into the validation set, whose metrics need every label: "
                "give the problem its own fully labelled 'val' split and set val_fraction = 0."
            )
    try:
        return training_label_mask(
            native,
            problem.n("train"),
            list(problem.tasks),
            cfg.label_fractions,
            cfg.labels_seed,
            train_idx,
            cfg.label_counts,
        )
    except ValueError as e:
        raise ValueError(f"{cfg.run_id}: {e}") from e


def _saved_result(
    cfg: RunConfig, result_path: Path, resume: bool, show_progress: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """(the saved result when it is of ``cfg``, else None; the fingerprint of a saved result of
    another config, else None). A stale result warns (``StaleResultWarning``) and says so.
    """
    if not (resume and result_path.is_file()):
        return None, None
    saved = json.loads(result_path.read_text())
    if saved.get("fingerprint") == cfg.fingerprint():
        return saved, None
    msg = (
        f"{cfg.run_id}: the saved result.json is of another config "
        f"({_config_changes(saved.get('config', {}), cfg)}): recomputing."
    )
    warnings.warn(msg, StaleResultWarning, stacklevel=3)  # shown with progress output off too
    _note(msg, show_progress)
    return None, saved.get("fingerprint")


def _saved_checkpoint(
    cfg: RunConfig, ckpt_path: Path, stale_fp: str | None, device: torch.device, resume: bool
) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start over (none saved, or the last checkpoint of
    the stale finished run whose fingerprint is ``stale_fp``); another config's is an error.
    """
    if not (resume and ckpt_path.is_file()):
        return None
    ck = torch.load(ckpt_path, map_location=device, weights_only=False)
    if ck["fingerprint"] == cfg.fingerprint():
        return ck
    if stale_fp is None or ck["fingerprint"] != stale_fp:
        raise RuntimeError(
            f"{ckpt_path} belongs to a different config (fingerprint {ck['fingerprint']} ≠ "
            f"{cfg.fingerprint()}); delete that folder or write to another --out."
        )
    return None


@dataclass
class _Trainer:
    """The training state of one run: model, optimizer (with the method), scheduler, selector and
    the resumable counters in ``state`` (epoch, step in epoch, history, running epoch sums).
    """

    cfg: RunConfig
    setup: _Setup
    model: nn.Module
    opt: torch.optim.Optimizer
    topt: TaskOptimizer
    scheduler: Any
    selector: Selector
    steps_per_epoch: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.setup.problem.tasks)

    def task_mean(self, values: list[float]) -> float:
        """The single-task run's own task, or the mean over tasks."""
        st = self.cfg.single_task_index
        return float(values[st]) if st is not None else sum(values) / len(values)

    def checkpoint(self) -> dict[str, Any]:
        self.state["selection"] = self.selector.state_dict()
        cuda = self.setup.device.type == "cuda"
        return {
            "fingerprint": self.cfg.fingerprint(),
            "model": self.model.state_dict(),
            "topt": self.topt.state_dict(),
            "state": self.state,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if cuda else None,
        }

    def restore(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.topt.load_state_dict(ck["topt"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and self.setup.device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"])
        self.state = ck["state"]
        self.state.setdefault("selection", None)
        self.state["resumed"] += 1
        if self.state["selection"] is not None:
            self.selector.load_state_dict(self.state["selection"])


def _new_trainer(
    cfg: RunConfig, setup: _Setup, val_baseline: dict[str, float] | None, ck: dict[str, Any] | None
) -> _Trainer:
    """Seed, then build model, method, optimizer and scheduler (restored from ``ck`` when given)."""
    seed_everything(cfg.seed)
    model = setup.problem.make_model(**cfg.model).to(setup.device)
    method = build_method(cfg)  # after the model, before the optimizer: the order of random draws
    if setup.labelled is not None and "jacobian" in method.needs:
        raise ValueError(
            f"{cfg.run_id}: method {cfg.method!r} aggregates the Jacobian itself, and the training "
            "step cannot leave a task without labels in a batch out of a Jacobian aggregation "
            "(present=); this run is partially labelled (label_fractions or label_counts, or a "
            "natively partially labelled dataset): use a Gram, loss-based or auxiliary method, or "
            "label every task."
        )
    opt = _optimizer(model.parameters(), cfg.optimizer)
    scheduler = build_scheduler(opt, cfg.scheduler)
    topt = TaskOptimizer(opt, GradStep(method, source=cfg.source))
    steps = math.ceil(setup.n_train / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    saved_selection = None if ck is None else ck["state"].get("selection")
    selector = Selector(
        setup.criterion,
        setup.specs,
        list(setup.problem.tasks),
        metric=cfg.selection.get("metric"),
        single_task=cfg.single_task_index,
        baseline=val_baseline if saved_selection is None else saved_selection["baseline"],
    )
    trainer = _Trainer(
        cfg,
        setup,
        model,
        opt,
        topt,
        scheduler,
        selector,
        steps,
        {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "history": [],
            "epoch_stats": None,
            "step_times": [],
            "resumed": 0,
            "selection": None,
        },
    )
    if ck is not None:
        trainer.restore(ck)
    return trainer


def _loss_info(tasks: list[str], losses: Any) -> str:
    """The progress bar's loss field: ``loss left 0.123 right 0.456``."""
    return "loss " + " ".join(f"{t} {float(v):.3f}" for t, v in zip(tasks, losses, strict=True))


def _sketch_loss(
    tr: _Trainer, x: Any, y: Tensor, rows: Tensor | None, keep: list[int] | None
) -> ModuleLoss:
    """The batch's task losses as a function of the model's parameters, for the sketch source:
    fn(θ) = [Lᵢ(model_θ(x), y) for i in ``keep``], the losses the step is given (each task's
    masked mean over its labelled rows ``rows`` of the batch when the run has a label mask),
    of the tasks ``keep`` only (None: all k). With absent tasks the step's Gram is over the
    present tasks alone, so ``keep`` lists them, in order.
    """
    problem = tr.setup.problem

    def losses_of(out: Any) -> list[Tensor]:
        outs = out[1]  # the model returns (z, outputs)
        ls = problem.losses(outs, y) if rows is None else problem.masked_losses(outs, y, rows)[0]
        return ls if keep is None else [ls[i] for i in keep]

    return ModuleLoss(tr.model, losses_of, x)


def _check_sketch(tr: _Trainer, x: Any, outs: list[Tensor], y: Tensor, idx: Tensor) -> None:
    """For ``source = "sketch"``: the model's losses re-evaluated as a function of its parameters
    (:class:`~taskgrad.sources.ModuleLoss`) must equal the step's, and go through one
    forward-mode JVP under vmap as the sketch's do; a clear ValueError otherwise (e.g. dropout
    in training mode draws other masks on every forward, and vmap refuses random operations).
    """
    cfg, problem, labelled = tr.cfg, tr.setup.problem, tr.setup.labelled
    rows = None if labelled is None else labelled[idx.cpu()]
    if rows is None or bool(rows.all()):  # the step's losses, as _step computes them
        rows, keep, losses = None, None, problem.losses(outs, y)
    else:
        all_losses, present = problem.masked_losses(outs, y, rows)
        keep = present.nonzero().squeeze(-1).tolist()
        losses = [all_losses[i] for i in keep]
    fn = _sketch_loss(tr, x, y, rows, keep)
    named = fn.named_parameters()
    model = type(getattr(tr.model, "_orig_mod", tr.model)).__name__
    use = (
        "use source = 'full' or 'representation' for this model (or make its forward "
        "deterministic, e.g. dropout = 0)."
    )
    how = "as a function of its parameters"
    try:
        with torch.no_grad():
            again = fn({n: p.detach() for n, p in named.items()})
        given = torch.stack([v.detach().reshape(()) for v in losses]).to(again)
        same = bool(torch.allclose(again, given, rtol=1e-3, atol=1e-6))
        if same:
            how = "with forward-mode JVPs (torch.func.jvp under vmap)"
            device = next(iter(named.values())).device
            sketch_jacobian(fn, named, 1, generator=torch.Generator(device=device).manual_seed(0))
    except Exception as e:  # noqa: BLE001 (whatever the model does, say which source to use)
        raise ValueError(
            f"{cfg.run_id}: source = 'sketch' re-evaluates the model's losses {how}, and model "
            f"{model} of dataset {cfg.dataset!r} fails there ({type(e).__name__}: {e}): {use}"
        ) from e
    if not same:
        raise ValueError(
            f"{cfg.run_id}: source = 'sketch' re-evaluates the model's losses as a function of "
            f"its parameters, and model {model} of dataset {cfg.dataset!r} gives other losses on "
            f"the same batch ({given.tolist()} in the step, {again.tolist()} re-evaluated): a "
            "random layer in training mode (dropout) or a forward that depends on more than "
            "the parameters and the batch, so the sketch would estimate the Gram of other "
            f"losses: {use}"
        )


def _step(
    tr: _Trainer,
    outs: list[Tensor],
    y: Tensor,
    idx: Tensor,
    features: Tensor | None,
    x: Any = None,
) -> tuple[StepResult | None, Tensor | None]:
    """One optimizer step on a batch (rows ``idx`` of the training split): (the step's result, or
    None when a single-task baseline's task is absent and nothing is stepped; the (k,) present
    flags, None when every task is labelled in the batch). With a label mask each task's loss is
    its masked mean (:meth:`Problem.masked_losses`) and absent tasks are passed
    to the step as ``present=``. The sketch source gets the same losses as a function of the
    parameters (:func:`_sketch_loss` of the batch's inputs ``x``), of the present tasks only.
    """
    problem, labelled = tr.setup.problem, tr.setup.labelled
    rows = None if labelled is None else labelled[idx.cpu()]
    sketch = tr.cfg.source == "sketch" and x is not None

    def loss_fn(r: Tensor | None, keep: list[int] | None) -> ModuleLoss | None:
        return _sketch_loss(tr, x, y, r, keep) if sketch else None

    if rows is None or bool(rows.all()):
        step = tr.topt.step(problem.losses(outs, y), features=features, loss_fn=loss_fn(None, None))
        return step, None
    losses, present = problem.masked_losses(outs, y, rows)
    if bool(present.all()):
        return tr.topt.step(losses, features=features, loss_fn=loss_fn(rows, None)), present
    method = tr.topt.gradstep.method
    st = tr.cfg.single_task_index
    if st is not None:  # a single-task baseline: its own task alone matters
        if not bool(present[st]):
            return None, present
        assert isinstance(method, OneTask)
        method.present = present
    fallback: Any = "skip"  # used by a primary/auxiliary method whose primary (task 0) is absent
    if (
        not bool(present[0])
        and tr.cfg.absent_primary != "skip"
        and getattr(method, "method_name", "") != "primary-only"
    ):
        fallback = make_method(tr.cfg.absent_primary)  # stateless (checked with the config)
    try:
        step = tr.topt.step(
            losses,
            features=features,
            present=present,
            absent_primary=fallback,
            loss_fn=loss_fn(rows, present.nonzero().squeeze(-1).tolist()),
        )
        return step, present
    finally:
        if isinstance(method, OneTask):
            method.present = None


def _train_epoch(
    tr: _Trainer,
    progress: Any,
    bar: Any,
    on_step: Callable[[int], None] | None,
    save: Callable[[], None],
) -> None:
    """The remaining steps of the current epoch (from ``state["step_in_epoch"]``), summing the
    losses and weights into ``state["epoch_stats"]``; a checkpoint every ``checkpoint_every`` steps.
    """
    cfg, setup, state = tr.cfg, tr.setup, tr.state
    k = len(tr.tasks)
    if state["epoch_stats"] is None:
        state["epoch_stats"] = {
            "loss_sum": [0.0] * k,
            "w_sum": [0.0] * k,
            "steps": 0,
            "skipped": 0,
            "time": 0.0,
            "absent": [0] * k,
        }
    stats = state["epoch_stats"]
    stats.setdefault("absent", [0] * k)  # a checkpoint of an older version
    perm = _perm(cfg.seed, state["epoch"], setup.n_train)
    use_features = cfg.source in ("representation", "auto")
    cuda = setup.device.type == "cuda"
    tr.model.train()
    for b in range(state["step_in_epoch"], tr.steps_per_epoch):
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        if setup.train_idx is not None:
            idx = setup.train_idx[idx]
        x, y = setup.problem.batch(idx, "train")
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        z, outs = tr.model(x)
        checked = 0.0
        if cfg.source == "sketch" and state["global_step"] == 0:  # a clear error, not a crash
            t1 = time.perf_counter()
            _check_sketch(tr, x, outs, y, idx)
            checked = time.perf_counter() - t1
        res, present = _step(tr, outs, y, idx, z if use_features else None, x)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0 - checked
        stats["time"] += dt
        stats["steps"] += 1
        stats["skipped"] += int(res is None or res.skipped)
        for i in range(k):
            if present is not None and not bool(present[i]):
                stats["absent"][i] += 1
            elif res is not None:
                stats["loss_sum"][i] += float(res.losses[i])
            if res is not None and not res.skipped:
                stats["w_sum"][i] += float(res.weights[i])
        state["step_times"].append(dt)
        state["step_in_epoch"] = b + 1
        state["global_step"] += 1
        info = "task absent: skipped" if res is None else _loss_info(tr.tasks, res.losses)
        progress.update(bar, advance=1, info=info)
        if state["global_step"] % cfg.checkpoint_every == 0 and b + 1 < tr.steps_per_epoch:
            save()
        if on_step is not None:
            on_step(state["global_step"])


def _end_epoch(tr: _Trainer, best_path: Path) -> tuple[dict[str, Any], float | None, bool]:
    """Evaluate after an epoch, append its history row, update the selection (saving the best
    model) and step the scheduler; returns (row, selection score, whether it improved).
    """
    cfg, setup, state = tr.cfg, tr.setup, tr.state
    stats = state["epoch_stats"]
    absent = stats.get("absent", [0] * len(tr.tasks))
    epoch = state["epoch"]
    metrics = setup.problem.evaluate(tr.model, cfg.eval_batch_size)
    n_steps = max(stats["steps"], 1)
    applied = max(stats["steps"] - stats["skipped"], 1)
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_time_s": stats["time"],
        "steps": stats["steps"],
        "skipped": stats["skipped"],
        "lr": float(tr.opt.param_groups[0]["lr"]),
    }
    for i, t in enumerate(tr.tasks):
        present_steps = stats["steps"] - absent[i]  # the mean over the steps with the task
        if not absent[i]:
            row[f"train_loss/{t}"] = stats["loss_sum"][i] / n_steps
        else:
            row[f"train_loss/{t}"] = (
                stats["loss_sum"][i] / present_steps if present_steps else float("nan")
            )
        row[f"weight/{t}"] = stats["w_sum"][i] / applied
    if setup.labelled is not None:
        row.update({f"absent/{t}": absent[i] for i, t in enumerate(tr.tasks)})
    row.update(metrics)
    val_metrics: dict[str, float] = {}
    val_losses: list[float] | None = None
    if setup.evaluate_val is not None:  # metrics and losses from one pass (see split_evaluator)
        val_metrics, val_losses = setup.evaluate_val(tr.model, cfg.eval_batch_size)
        row.update({f"val/{key}": v for key, v in val_metrics.items()})
        row.update({f"val_loss/{t}": v for t, v in zip(tr.tasks, val_losses, strict=True)})
        row["val_loss"] = tr.task_mean(val_losses)
    score = tr.selector.score(val_metrics, val_losses)
    if score is not None:
        row["val_score"] = score
    improved = tr.selector.update(epoch + 1, score)
    if improved and tr.selector.needs_validation:
        _atomic_save(tr.model.state_dict(), best_path)
    state["history"].append(row)
    for r in state["history"]:  # 1 on the best epoch so far
        r["selected"] = int(r["epoch"] == tr.selector.best_epoch)
    if setup.monitor is not None:
        train_loss = tr.task_mean([row[f"train_loss/{t}"] for t in tr.tasks])
        step_scheduler(
            tr.scheduler,
            {"val_loss": row.get("val_loss"), "criterion": score, "train_loss": train_loss}[
                setup.monitor
            ],
        )
    else:
        step_scheduler(tr.scheduler, None)
    state["epoch"] += 1
    state["step_in_epoch"] = 0
    state["epoch_stats"] = None
    return row, score, improved


def _epoch_line(tr: _Trainer, row: dict[str, Any], score: float | None, improved: bool) -> str:
    """The progress output of a finished epoch: its test metrics and validation score."""
    line = (
        f"[bold]{tr.cfg.run_id}[/] epoch {row['epoch']}/{tr.cfg.epochs} (lr {row['lr']:.3g}): "
        + ", ".join(f"{m.key}={row[m.key]:.4f}" for m in tr.setup.problem.metrics)
    )
    if score is not None:
        line += f"; validation {tr.setup.criterion} {score:.4f}" + (
            " (best)" if improved else f" (best: epoch {tr.selector.best_epoch})"
        )
    return line


def _progress_bar(show: bool) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not show,
        transient=True,
    )


def _result(tr: _Trainer) -> dict[str, Any]:
    """The run's result.json: config, metrics of the selected and the last epoch, history,
    selection and timings (the median step: the first steps include warm-up and compilation).
    """
    cfg, setup = tr.cfg, tr.setup
    times = torch.tensor(tr.state["step_times"], dtype=torch.float64)
    hist = tr.state["history"]
    best = tr.selector.best_epoch or len(hist)
    sel_row = hist[best - 1] if hist else {}
    n_val = 0
    if setup.val_split is not None:
        n_val = (
            len(setup.val_idx) if setup.val_idx is not None else setup.problem.n(setup.val_split)
        )
    selection = {
        "criterion": setup.criterion,
        "metric": tr.selector.metric,
        "epoch": best,
        "score": tr.selector.best_score,
        "val": {key: sel_row[f"val/{key}"] for key in setup.specs if f"val/{key}" in sel_row},
        "baseline": tr.selector.baseline or None,
        "validation": setup.val_source,
        "n_val": n_val,
    }
    return {
        "fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "run_id": cfg.run_id,
        "tasks": tr.tasks,
        "metric_specs": [
            {"key": m.key, "task": m.task, "name": m.name, "higher_is_better": m.higher_is_better}
            for m in setup.problem.metrics
        ],
        "final": sel_row,
        "last": hist[-1] if hist else {},
        "selection": selection,
        "history": hist,
        "time_per_step_s": float(times.median()) if times.numel() else float("nan"),
        "time_per_epoch_s": float(sum(r["train_time_s"] for r in hist) / max(len(hist), 1)),
        "n_params": sum(p.numel() for p in tr.model.parameters()),
        "device": str(setup.device),
        "resumed": tr.state["resumed"],
        "torch": torch.__version__,
        **(
            {}
            if setup.labelled is None
            else {
                "labels": {
                    "seed": cfg.labels_seed if cfg.label_fractions or cfg.label_counts else None,
                    "fractions": dict(cfg.label_fractions),
                    "counts": dict(cfg.label_counts),
                    "n_train": setup.n_train,
                    "n_labelled": dict(setup.n_labelled),
                }
            }
        ),
    }


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

    A saved ``result.json`` is returned only when its config fingerprint is ``cfg``'s; one of
    another
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
    folder = run_dir(out_dir, cfg)
    result_path, ckpt_path, best_path = (
        folder / "result.json",
        folder / "checkpoint.pt",
        folder / "best_model.pt",
    )
    saved, stale_fp = _saved_result(cfg, result_path, resume, show_progress)
    if saved is not None:
        return saved
    setup = _setup(cfg)
    ck = _saved_checkpoint(cfg, ckpt_path, stale_fp, setup.device, resume)
    if (
        setup.criterion == "delta_m" and cfg.single_task_index is None
    ):  # before seeding: a recompute draws numbers
        saved_sel = None if ck is None else ck["state"].get("selection")
        val_baseline = _delta_m_baseline(
            cfg,
            out_dir,
            list(setup.problem.tasks),
            list(setup.specs),
            val_baseline,
            None if saved_sel is None else dict(saved_sel["baseline"]),
            resume,
            show_progress,
        )
    folder.mkdir(parents=True, exist_ok=True)
    if ck is None:
        best_path.unlink(missing_ok=True)  # a fresh start: a best model here is another run's
    tr = _new_trainer(cfg, setup, val_baseline, ck)

    def save() -> None:
        _atomic_save(tr.checkpoint(), ckpt_path)

    with _progress_bar(show_progress) as progress:
        bar = progress.add_task(
            cfg.run_id,
            total=cfg.epochs * tr.steps_per_epoch,
            completed=tr.state["epoch"] * tr.steps_per_epoch + tr.state["step_in_epoch"],
            info="",
        )
        while tr.state["epoch"] < cfg.epochs:
            _train_epoch(tr, progress, bar, on_step, save)
            row, score, improved = _end_epoch(tr, best_path)
            save()
            _write_history_csv(folder / "history.csv", tr.state["history"])
            if show_progress:
                progress.console.print(_epoch_line(tr, row, score, improved))
    result = _result(tr)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def check_run(cfg: RunConfig) -> None:
    """Build everything ``cfg`` needs (problem and data, validation split, model, method, optimizer,
    scheduler) and take one training step on a copy, writing nothing: the errors a run would meet
    in its first step (a wrong [data] or [model] value, a method that cannot handle the losses)
    are raised now.
    """
    setup = _setup(cfg)
    placeholder = {k: 1.0 for k in setup.specs}  # the Δm baseline: unused by a training step
    tr = _new_trainer(cfg, setup, placeholder if setup.criterion == "delta_m" else None, None)
    n = min(cfg.batch_size, setup.n_train)
    idx = torch.arange(n) if setup.train_idx is None else setup.train_idx[:n]
    x, y = setup.problem.batch(idx, "train")
    z, outs = tr.model(x)
    if cfg.source == "sketch":
        _check_sketch(tr, x, outs, y, idx)
    _step(tr, outs, y, idx, z if cfg.source in ("representation", "auto") else None, x)


def order_runs(cfgs: list[RunConfig]) -> list[RunConfig]:
    """Single-task baselines first (their validation metrics are the ``delta_m`` selection
    baseline),
    otherwise in the given order.
    """
    return [c for c in cfgs if c.is_single_task] + [c for c in cfgs if not c.is_single_task]


def run_all(
    cfgs: list[RunConfig], out_dir: str | Path, *, resume: bool = True, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Run every config, single-task baselines first (each resumes or is skipped when complete);
    the results come back in the order of ``cfgs``.
    """
    done = {
        id(c): run(c, out_dir, resume=resume, show_progress=show_progress) for c in order_runs(cfgs)
    }
    return [done[id(c)] for c in cfgs]
