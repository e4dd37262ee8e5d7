"""Lightning integration: a LightningModule that returns a dict of task losses trains with taskgrad.

::

    class Net(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = ..., ...
            self.configure_taskgrad(taskgrad.MGDA(), source="representation", automatic=True)

        def task_losses(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            return {"left": ce(self.heads[0](z), y[:, 0]), "right": ce(self.heads[1](z), y[:, 1])},
            z

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

The mixin supplies ``training_step``: the task losses (and optional shared features z) →
weights w from :class:`~taskgrad.distributed.DistributedStep` (exact under Lightning's DDP
strategy: one all-reduce of the k×k Gram, see :mod:`taskgrad.distributed`) → a backward of
Σ wᵢLᵢ. Two ways to run it:

* ``automatic=True`` (recommended): Lightning's automatic optimization is kept. ``training_step``
  computes w and returns Σ wᵢLᵢ; Lightning then does the backward (precision plugin and
  strategy), ``gradient_clip_val``, ``accumulate_grad_batches``, the optimizer step and the
  learning-rate schedulers as for any module. Under ``accumulate_grad_batches=M`` every
  micro-batch gets its own weights from its own Gram (the update is (1/M) Σₘ Σᵢ wᵢᵐ ∇Lᵢᵐ, as
  Lightning accumulates any loss), not the weights of the Gram of the whole window (for that,
  use :meth:`taskgrad.training.GradStep.accumulate` in a plain loop).
* ``automatic=False`` (the default, kept for existing code): manual optimization,
  ``self.manual_backward(Σ wᵢLᵢ)`` then ``optimizer.step()``. Lightning refuses
  ``gradient_clip_val`` and ``accumulate_grad_batches`` under manual optimization, and
  schedulers are not stepped: call ``self.lr_schedulers().step()`` yourself.

Precision plugins: the Gram is computed from the losses as the forward produced them (under
autocast), before the plugin's loss scaling; ``bf16-mixed`` needs nothing more, while under
``16-mixed`` very small fp16 gradients at the representation may underflow in the Gram (use
``bf16-mixed`` or the full-parameter source there).

In both, a step with a non-finite loss, Gram or weights on any rank is skipped on every rank
(automatic: ``training_step`` returns None, so Lightning skips backward and step). Each step
logs through ``self.log`` (so to every Lightning logger): ``loss`` (Σ wᵢLᵢ, in the progress
bar), ``taskgrad/weight/<task>``, ``taskgrad/loss/<task>``, ``taskgrad/cos/<a>|<b>``,
``taskgrad/gram_cond`` and ``taskgrad/active_constraints``; and, when given, to a
:class:`taskgrad.tracking.TrainingLogger` (written by rank 0; under accumulation, the first
micro-batch of each optimizer step).

Checkpoints: the method's, source's and schedule's state (e.g. FAMO's logits and their Adam
moments) go into Lightning checkpoints under ``checkpoint["taskgrad"]`` through
``on_save_checkpoint``/``on_load_checkpoint``, so ``trainer.fit(model, ckpt_path=...)`` resumes
them exactly. A module that overrides these hooks must call ``super()`` in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor

from .distributed.step import DistributedStep, DistributedStepResult
from .methods.base import Weighting
from .sources.objects import GramSource
from .tracking.loggers import TrainingLogger
from .tracking.stats import step_scalars

if TYPE_CHECKING:
    from pytorch_lightning import LightningModule

__all__ = ["TaskGradMixin", "lightning_available"]


def lightning_available() -> bool:
    """Whether ``lightning`` or ``pytorch_lightning`` imports (the optional extra)."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            __import__(name)
            return True
        except ImportError:
            continue
    return False


class TaskGradMixin:
    """Mix into a LightningModule (listed first): implement :meth:`task_losses`, call
    :meth:`configure_taskgrad` in ``__init__``. See the module docstring.
    """

    def _taskgrad_host(self) -> LightningModule:
        """This object seen as the LightningModule it is mixed into (log, optimizers, ...)."""
        return cast("LightningModule", self)

    def configure_taskgrad(
        self,
        method: Weighting | None = None,
        source: GramSource | str = "auto",
        *,
        automatic: bool = False,
        period: int = 1,
        ema: float | None = None,
        nonfinite: Literal["auto", "raise", "skip"] = "auto",
        debug: bool = False,
        logger: TrainingLogger | None = None,
        log_every: int = 1,
        log_stats: bool = True,
    ) -> None:
        """Choose the method and source, and whether Lightning keeps automatic optimization.

        ``automatic=True`` keeps Lightning's automatic optimization (clipping, accumulation,
        precision plugins and schedulers work); False switches to manual optimization (see the
        module docstring). ``logger`` receives every ``log_every``-th applied step (rank 0
        only); ``log_stats`` adds the Gram statistics (cosines, κ, active constraints) to
        ``self.log``.
        """
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be a positive int, got {log_every!r}.")
        if not isinstance(automatic, bool):
            raise TypeError(f"automatic must be True or False, got {automatic!r}.")
        self.automatic_optimization = automatic
        self.taskgrad_step = DistributedStep(
            method,
            source,
            period=period,
            ema=ema,
            nonfinite=nonfinite,
            debug=debug,
            module=self._taskgrad_host() if debug else None,
        )
        self.taskgrad_logger = logger
        self.taskgrad_log_every = log_every
        self.taskgrad_log_stats = log_stats
        self.taskgrad_last: DistributedStepResult | None = None
        self.taskgrad_skipped = 0
        self._taskgrad_logged_step: int | None = None

    def task_losses(
        self, batch: Any, batch_idx: int
    ) -> Mapping[str, Tensor] | tuple[Mapping[str, Tensor], Any]:
        """Return {task name: scalar loss}, or ({...}, z) with z the shared features."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement task_losses(batch, batch_idx) returning a dict "
            "{task name: scalar loss} (optionally with the shared features: (dict, z))."
        )

    def _taskgrad_split(self, out: Any) -> tuple[list[str], list[Tensor], Any]:
        features = None
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError(
                    "task_losses must return a dict of losses or a (dict, features) pair."
                )
            out, features = out
        if not isinstance(out, Mapping) or not out:
            raise TypeError(
                f"task_losses must return a non-empty dict {{task name: scalar loss}}, got "
                f"{type(out).__name__}."
            )
        return [str(n) for n in out], list(out.values()), features

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One taskgrad step; returns Σ wᵢLᵢ (automatic: with its graph, for Lightning's
        backward; manual: detached, after the step), or None for a skipped automatic step.
        """
        if not hasattr(self, "taskgrad_step"):
            raise RuntimeError("call self.configure_taskgrad(...) in __init__ before training.")
        names, losses, features = self._taskgrad_split(self.task_losses(batch, batch_idx))
        if self.automatic_optimization:
            return self._taskgrad_automatic(names, losses, features)
        opt = self._taskgrad_host().optimizers()
        if isinstance(opt, list):
            raise TypeError(
                "TaskGradMixin drives one optimizer; configure_optimizers returned several."
            )
        opt.zero_grad()
        res = self.taskgrad_step.backward(
            losses, features=features, backward_fn=self._taskgrad_host().manual_backward
        )
        self.taskgrad_last = res
        if res.skipped:
            self._taskgrad_skip()
            return torch.stack([x.detach() for x in losses]).sum()
        opt.step()
        local = res.local_losses
        assert local is not None, "an applied step carries this rank's losses"
        total = (res.weights.to(local.dtype) * local).sum()
        self._taskgrad_log(names, res, total, int(self._taskgrad_host().global_step))
        return total

    def _taskgrad_automatic(
        self, names: list[str], losses: list[Tensor], features: Any
    ) -> Tensor | None:
        """Weights now; the weighted loss (with its graph) goes back to Lightning's backward."""
        captured: list[Tensor] = []
        res = self.taskgrad_step.backward(losses, features=features, backward_fn=captured.append)
        self.taskgrad_last = res
        if res.skipped:
            self._taskgrad_skip()
            return None
        total = captured[0]
        # the optimizer step this micro-batch contributes to (global_step counts finished steps)
        self._taskgrad_log(names, res, total.detach(), int(self._taskgrad_host().global_step) + 1)
        return total

    def _taskgrad_skip(self) -> None:
        self.taskgrad_skipped += 1
        self._taskgrad_host().log(
            "taskgrad/skipped", float(self.taskgrad_skipped), on_step=True, on_epoch=False
        )

    def _taskgrad_log(
        self, names: list[str], res: DistributedStepResult, total: Tensor, step: int
    ) -> None:
        # Σ wᵢLᵢ on this rank's batch, shown in the progress bar
        self._taskgrad_host().log(
            "loss",
            total.detach().float(),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        if step % self.taskgrad_log_every:
            return
        gram = res.gram if self.taskgrad_log_stats else None
        scalars = step_scalars(res.weights, gram, res.losses, names)
        renamed = {}
        for key, v in scalars.items():
            key = key.replace("gram/cond", "gram_cond").replace(
                "gram/active_constraints", "active_constraints"
            )
            renamed[f"taskgrad/{key}"] = v if v != float("inf") else torch.finfo(torch.float32).max
        # identical on every rank (one all-reduce made them so): no sync_dist needed
        self._taskgrad_host().log_dict(renamed, on_step=True, on_epoch=False, batch_size=1)
        if (
            self.taskgrad_logger is not None
            and getattr(self, "global_rank", 0) == 0
            and step != self._taskgrad_logged_step
        ):
            if self.taskgrad_logger.names is None:
                self.taskgrad_logger.names = names
            self.taskgrad_logger.log_step(step, res)
            self._taskgrad_logged_step = step

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the method, source and schedule state under ``checkpoint["taskgrad"]``."""
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        if hasattr(self, "taskgrad_step"):
            checkpoint["taskgrad"] = {
                "step": self.taskgrad_step.state_dict(),
                "skipped": self.taskgrad_skipped,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` stored; a checkpoint without it is an error
        (the method would silently restart from scratch).
        """
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        if not hasattr(self, "taskgrad_step"):
            return
        state = checkpoint.get("taskgrad")
        if state is None:
            raise KeyError(
                "this checkpoint holds no taskgrad state (checkpoint['taskgrad']): it was written "
                "by a "
                "module without TaskGradMixin's on_save_checkpoint (one that overrides it must "
                "call "
                "super().on_save_checkpoint(checkpoint)); resuming would restart the method from "
                "scratch."
            )
        self.taskgrad_step.load_state_dict(state["step"])
        self.taskgrad_skipped = int(state.get("skipped", 0))
