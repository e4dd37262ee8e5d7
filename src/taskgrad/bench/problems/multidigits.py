"""MultiMNIST and MultiFashion: the left and right item of one 28×28 image, MultiLeNet."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..problem import Metric, Problem

__all__ = ["MultiDigitsProblem", "multifashion", "multimnist"]


class MultiDigitsProblem(Problem):
    """Two classification tasks (left, right) on shared images: cross-entropy losses, accuracy
    per task. ``n_train``/``n_test`` keep the first rows (0: all); ``root`` is the folder of the
    source IDX files (default: the installed MNIST / Fashion-MNIST).
    """

    tasks = ["left", "right"]
    metrics = [Metric("left", "acc", True), Metric("right", "acc", True)]

    def __init__(
        self,
        kind: str = "mnist",
        n_train: int = 0,
        n_test: int = 0,
        root: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        from ...datasets.multimnist import load_multimnist

        d = load_multimnist(kind, root=root, cache_dir=cache_dir)  # type: ignore[arg-type]
        trn = slice(None, n_train or None)
        tst = slice(None, n_test or None)
        super().__init__(
            torch.from_numpy(d.train_x[trn]),
            torch.from_numpy(d.train_y[trn]),
            torch.from_numpy(d.test_x[tst]),
            torch.from_numpy(d.test_y[tst]),
        )

    def prepare(self, x: Tensor) -> Tensor:
        return ((x.float() / 255.0) - 0.1307).div_(0.3081).unsqueeze(1)

    def make_model(self, dropout: float = 0.0) -> nn.Module:
        from ...models.lenet import MultiLeNet

        return MultiLeNet(n_tasks=2, n_classes=10, dropout=dropout)

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [self.task_loss(i, outputs, y) for i in range(len(outputs))]

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        """Cross-entropy of task i's logits."""
        return nn.functional.cross_entropy(outputs[i], y[:, i])

    def metric_sums(self, outputs: list[Tensor], y: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, (t, o) in enumerate(zip(self.tasks, outputs, strict=True)):
            out[f"{t}/acc"] = (o.argmax(-1) == y[:, i]).sum()
            out[f"{t}/loss"] = nn.functional.cross_entropy(o, y[:, i], reduction="sum")
        return out


def multimnist(
    n_train: int = 0, n_test: int = 0, root: str | None = None, cache_dir: str | None = None
) -> Problem:
    """The ``multimnist`` problem (two MNIST digits per image)."""
    return MultiDigitsProblem(
        "mnist", n_train=n_train, n_test=n_test, root=root, cache_dir=cache_dir
    )


def multifashion(
    n_train: int = 0, n_test: int = 0, root: str | None = None, cache_dir: str | None = None
) -> Problem:
    """The ``multifashion`` problem (two Fashion-MNIST items per image)."""
    return MultiDigitsProblem(
        "fashion", n_train=n_train, n_test=n_test, root=root, cache_dir=cache_dir
    )
