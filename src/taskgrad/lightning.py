"""Lightning integration: a LightningModule that returns a dict of task losses trains with taskgrad.

::

    class Net(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = ..., ...
            self.configure_taskgrad(taskgrad.MGDA(), source="representation")

        def task_losses(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            return {"left": ce(self.heads[0](z), y[:, 0]), "right": ce(self.heads[1](z), y[:, 1])}, z

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

The mixin turns on manual optimization and supplies ``training_step``: the task losses (and
optional shared features z) → weights w from :class:`~taskgrad.distributed.DistributedStep`
(exact under Lightning's DDP strategy: one all-reduce of the k×k Gram, see
:mod:`taskgrad.distributed`) → ``self.manual_backward(Σ wᵢLᵢ)`` (so Lightning's precision
plugin and strategy do the backward) → ``optimizer.step()``. A step with a non-finite loss,
Gram or weights on any rank is skipped on every rank. Each step logs ``taskgrad/weight/<task>``,
``taskgrad/loss/<task>``, ``taskgrad/cos/<a>|<b>``, ``taskgrad/gram_cond`` and
``taskgrad/active_constraints`` through ``self.log`` and, when given, a
:class:`taskgrad.tracking.TrainingLogger` (written by rank 0).

Learning-rate schedulers are not stepped automatically under manual optimization: call
``self.lr_schedulers().step()`` where you want it (e.g. in ``on_train_epoch_end``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from .distributed.step import DistributedStep, DistributedStepResult
from .tracking.loggers import TrainingLogger
from .tracking.stats import step_scalars
from .methods.base import Weighting
from .sources.objects import GramSource

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
    :meth:`configure_taskgrad` in ``__init__``. See the module docstring."""

    def configure_taskgrad(
        self,
        method: Weighting | None = None,
        source: GramSource | str = "auto",
        *,
        period: int = 1,
        ema: float | None = None,
        nonfinite: Literal["raise", "skip"] = "skip",
        debug: bool = False,
        logger: TrainingLogger | None = None,
        log_every: int = 1,
        log_stats: bool = True,
    ) -> None:
        """Choose the method and source; switches the module to manual optimization.

        ``logger`` receives every ``log_every``-th applied step (rank 0 only); ``log_stats``
        adds the Gram statistics (cosines, κ, active constraints) to ``self.log``.
        """
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be a positive int, got {log_every!r}.")
        self.automatic_optimization = False
        self.taskgrad_step = DistributedStep(method, source, period=period, ema=ema, nonfinite=nonfinite,
                                             debug=debug, module=self if debug else None)  # type: ignore[arg-type]
        self.taskgrad_logger = logger
        self.taskgrad_log_every = log_every
        self.taskgrad_log_stats = log_stats
        self.taskgrad_last: DistributedStepResult | None = None
        self.taskgrad_skipped = 0

    def task_losses(self, batch: Any, batch_idx: int) -> Mapping[str, Tensor] | tuple[Mapping[str, Tensor], Any]:
        """Return {task name: scalar loss}, or ({...}, z) with z the shared features."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement task_losses(batch, batch_idx) returning a dict "
            "{task name: scalar loss} (optionally with the shared features: (dict, z))."
        )

    def _taskgrad_split(self, out: Any) -> tuple[list[str], list[Tensor], Any]:
        features = None
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError("task_losses must return a dict of losses or a (dict, features) pair.")
            out, features = out
        if not isinstance(out, Mapping) or not out:
            raise TypeError(
                f"task_losses must return a non-empty dict {{task name: scalar loss}}, got {type(out).__name__}."
            )
        return [str(n) for n in out], list(out.values()), features

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One taskgrad step (manual optimization); returns the weighted loss, detached."""
        if not hasattr(self, "taskgrad_step"):
            raise RuntimeError("call self.configure_taskgrad(...) in __init__ before training.")
        names, losses, features = self._taskgrad_split(self.task_losses(batch, batch_idx))
        opt = self.optimizers()  # type: ignore[attr-defined]
        if isinstance(opt, list):
            raise ValueError("TaskGradMixin drives one optimizer; configure_optimizers returned several.")
        opt.zero_grad()
        res = self.taskgrad_step.backward(losses, features=features, backward_fn=self.manual_backward)  # type: ignore[attr-defined]
        self.taskgrad_last = res
        if res.skipped:
            self.taskgrad_skipped += 1
            self.log("taskgrad/skipped", float(self.taskgrad_skipped), on_step=True, on_epoch=False)  # type: ignore[attr-defined]
            return torch.stack([x.detach() for x in losses]).sum()
        opt.step()
        self._taskgrad_log(names, res)
        return (res.weights.to(res.local_losses.dtype) * res.local_losses).sum()

    def _taskgrad_log(self, names: list[str], res: DistributedStepResult) -> None:
        step = int(self.global_step)  # type: ignore[attr-defined]
        if step % self.taskgrad_log_every:
            return
        gram = res.gram if self.taskgrad_log_stats else None
        scalars = step_scalars(res.weights, gram, res.losses, names)
        renamed = {}
        for key, v in scalars.items():
            key = key.replace("gram/cond", "gram_cond").replace("gram/active_constraints", "active_constraints")
            renamed[f"taskgrad/{key}"] = v if v != float("inf") else torch.finfo(torch.float32).max
        # identical on every rank (one all-reduce made them so): no sync_dist needed
        self.log_dict(renamed, on_step=True, on_epoch=False, batch_size=1)  # type: ignore[attr-defined]
        if self.taskgrad_logger is not None and getattr(self, "global_rank", 0) == 0:
            if self.taskgrad_logger.names is None:
                self.taskgrad_logger.names = names
            self.taskgrad_logger.log_step(step, res)
