"""Census-income (income, marital status) as a bench problem: shared-bottom MLP, AUC per task."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..problem import Metric, Problem
from .mlp import MultiHeadMLP

__all__ = ["CensusProblem"]


class CensusProblem(Problem):
    """Binary cross-entropy per task; metrics: AUC (↑) per task on the test split."""

    tasks = ["income", "marital"]
    metrics = [Metric("income", "auc", True), Metric("marital", "auc", True)]

    def __init__(self, source: str | None = None, n_train: int = 0) -> None:
        from ...datasets.census import load_census

        d = load_census(source)
        n = n_train or None
        super().__init__(
            torch.from_numpy(d.train_x[:n]),
            torch.from_numpy(d.train_y[:n]),
            torch.from_numpy(d.test_x),
            torch.from_numpy(d.test_y),
        )
        self.dim = d.train_x.shape[1]

    def make_model(
        self,
        hidden: list[int] | None = None,
        architecture: str = "shared",
        n_experts: int = 4,
        n_shared: int = 2,
        n_specific: int = 1,
        k: int = 2,
    ) -> nn.Module:
        """The shared-bottom MLP, or another architecture of
        :func:`taskgrad.models.tabular_multitask`
        (``architecture``: mmoe, cgc, ple, dselect_k, cross_stitch, mtan) of the same widths.
        """
        if architecture == "shared":
            return MultiHeadMLP(self.dim, list(hidden or [128, 64]), [1, 1])
        from ...models import tabular_multitask

        return tabular_multitask(
            architecture,
            self.dim,
            list(hidden or [128, 64]),
            [1, 1],
            n_experts=n_experts,
            n_shared=n_shared,
            n_specific=n_specific,
            k=k,
        )

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [self.task_loss(i, outputs, y) for i in range(len(outputs))]

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        """Binary cross-entropy of task i's logits."""
        return nn.functional.binary_cross_entropy_with_logits(
            outputs[i].squeeze(-1), y[:, i].float()
        )

    def _aucs(
        self,
        model: nn.Module,
        batch_size: int,
        split: str,
        indices: torch.Tensor | None,
        with_losses: bool,
    ) -> tuple[dict[str, float], list[float] | None]:
        from sklearn.metrics import roc_auc_score

        scores: list[list[np.ndarray]] = [[], []]

        def visit(outs: list[Tensor], y: Tensor) -> None:
            for i, o in enumerate(outs):
                scores[i].append(o.squeeze(-1).float().cpu().numpy())

        losses = self._eval_loop(model, batch_size, split, indices, visit, with_losses)
        yt = self.y[split] if indices is None else self.y[split][indices.to(self.device)]
        y = yt.cpu().numpy()
        aucs = {
            f"{t}/auc": float(roc_auc_score(y[:, i], np.concatenate(scores[i])))
            for i, t in enumerate(self.tasks)
        }
        return aucs, losses

    def evaluate(
        self,
        model: nn.Module,
        batch_size: int = 4096,
        split: str = "test",
        indices: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """AUC of each task on ``split`` (or its rows ``indices``), from the scores of every
        example.
        """
        return self._aucs(model, batch_size, split, indices, with_losses=False)[0]

    def evaluate_with_losses(
        self,
        model: nn.Module,
        batch_size: int = 4096,
        split: str = "test",
        indices: torch.Tensor | None = None,
    ) -> tuple[dict[str, float], list[float]]:
        """``(evaluate(...), mean_losses(...))`` from one forward pass per batch."""
        aucs, losses = self._aucs(model, batch_size, split, indices, with_losses=True)
        assert losses is not None
        return aucs, losses
