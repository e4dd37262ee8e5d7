"""QM9 as a bench problem: 11 regression tasks, the compact MPNN, MAE per task in original units.

Protocol (Nash-MTL / FAMO): targets standardized with the training split's mean and std, one MSE
loss per standardized target, metric MAE per target in original units with energies (homo, lumo,
gap, zpve, U0, U, H, G) in meV as in the published tables (mu in D, alpha in a0³, r2 in a0²).
Two registered problems: ``qm9`` (tasks in the standard order, mu first) and ``qm9-u0`` (U0 first,
the others in standard order: the primary task of ``primary-aux`` with ``n_primary = 1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..problem import Metric, Problem

__all__ = [
    "ENERGY_TARGETS",
    "STANDARD_ORDER",
    "U0_FIRST",
    "Molecules",
    "QM9Problem",
    "qm9",
    "qm9_u0",
]

STANDARD_ORDER = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")
U0_FIRST = ("U0",) + tuple(t for t in STANDARD_ORDER if t != "U0")
ENERGY_TARGETS = {
    "homo",
    "lumo",
    "gap",
    "zpve",
    "U0",
    "U",
    "H",
    "G",
}  # eV in the data, reported in meV


class Molecules:
    """Molecules of one split, stored flat on a device; ``mols[idx]`` is the GraphBatch of
    ``idx``.
    """

    def __init__(self, z: Tensor, pos: Tensor, ptr: Tensor) -> None:
        self.z, self.pos, self.ptr = z, pos, ptr

    @staticmethod
    def select(z: np.ndarray, pos: np.ndarray, ptr: np.ndarray, mols: np.ndarray) -> Molecules:
        """The molecules ``mols`` (in that order) of flat arrays (z, pos, ptr)."""
        counts = (ptr[mols + 1] - ptr[mols]).astype(np.int64)
        starts = np.repeat(ptr[mols], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        atom = starts + within
        new_ptr = np.concatenate([[0], np.cumsum(counts)])
        return Molecules(
            torch.from_numpy(z[atom].astype(np.int64)),
            torch.from_numpy(pos[atom].astype(np.float32)),
            torch.from_numpy(new_ptr),
        )

    def __len__(self) -> int:
        return int(self.ptr.numel() - 1)

    def to(self, device: torch.device | str) -> Molecules:
        return Molecules(self.z.to(device), self.pos.to(device), self.ptr.to(device))

    def __getitem__(self, idx: Tensor) -> Any:
        from ...models.mpnn import GraphBatch

        idx = idx.to(self.ptr.device).long()
        counts = self.ptr[idx + 1] - self.ptr[idx]
        csum = counts.cumsum(0)
        total = int(csum[-1]) if csum.numel() else 0
        atom = torch.repeat_interleave(self.ptr[idx] - (csum - counts), counts) + torch.arange(
            total, device=idx.device
        )
        return GraphBatch(self.z[atom], self.pos[atom], torch.cat([csum.new_zeros(1), csum]))


class QM9Problem(Problem):
    """QM9 regression (see the module docstring). ``[data]``: ``source`` (qm9pack data dir or CSV),
    ``cache_dir``, ``split_seed`` (0), ``n_train`` (110000), ``n_val`` (10000), ``subset`` (0: all
    training molecules), ``n_test`` (0: the whole evaluation split), ``eval_split`` ("test" |
    "val"). With
    ``eval_split = "test"`` the validation molecules are kept as the ``"val"`` split, which the
    harness evaluates every epoch (model selection, ReduceLROnPlateau).
    """

    def __init__(
        self,
        source: str | None = None,
        cache_dir: str | None = None,
        split_seed: int = 0,
        n_train: int = 110_000,
        n_val: int = 10_000,
        subset: int = 0,
        n_test: int = 0,
        eval_split: str = "test",
        tasks: tuple[str, ...] = STANDARD_ORDER,
        data: Any = None,
    ) -> None:
        from ...datasets.qm9 import TARGETS, load_qm9, split_qm9

        if eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}.")
        d = data if data is not None else load_qm9(source, cache_dir=cache_dir)
        split = split_qm9(len(d), split_seed, n_train, n_val, subset)
        ev = split[eval_split][: n_test or None]
        if len(ev) == 0:
            raise ValueError(
                f"the {eval_split} split is empty; lower n_train/n_val or use the other split."
            )
        cols = [TARGETS.index(t) for t in tasks]
        y_tr, y_ev = d.y[split["train"]][:, cols], d.y[ev][:, cols]
        self.mean, self.std = y_tr.mean(0), y_tr.std(0)
        if not (self.std > 0).all():
            raise ValueError(
                "training targets "
                f"{[t for t, s in zip(tasks, self.std, strict=True) if not s > 0]} are "
                "constant: "
                "standardization needs at least two distinct values (use a larger subset)."
            )
        self.tasks = list(tasks)
        self.metrics = [Metric(t, "mae", False) for t in self.tasks]
        self.scale = torch.tensor(
            [self.std[i] * (1000.0 if t in ENERGY_TARGETS else 1.0) for i, t in enumerate(tasks)]
        )
        norm = lambda y: torch.from_numpy(((y - self.mean) / self.std).astype(np.float32))  # noqa: E731
        super().__init__(
            Molecules.select(d.z, d.pos, d.ptr, split["train"]),
            norm(y_tr),
            Molecules.select(d.z, d.pos, d.ptr, ev),
            norm(y_ev),
        )
        if eval_split == "test" and len(
            split["val"]
        ):  # the protocol's validation split (model selection)
            self.x["val"] = Molecules.select(d.z, d.pos, d.ptr, split["val"])
            self.y["val"] = norm(d.y[split["val"]][:, cols])

    def to(self, device: torch.device) -> Problem:
        self.scale = self.scale.to(device)
        return super().to(device)

    def make_model(
        self, hidden: int = 64, n_layers: int = 3, n_rbf: int = 32, cutoff: float = 5.0
    ) -> nn.Module:
        from ...models.mpnn import MPNN

        return MPNN(len(self.tasks), hidden=hidden, n_layers=n_layers, n_rbf=n_rbf, cutoff=cutoff)

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [self.task_loss(i, outputs, y) for i in range(len(outputs))]

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        """MSE of task i's standardized target."""
        return nn.functional.mse_loss(outputs[i].squeeze(-1), y[:, i])

    def metric_sums(self, outputs: list[Tensor], y: Tensor) -> dict[str, Tensor]:
        """Σ |ŷ − y| in original units (meV for energies): standardized error × std (× 1000)."""
        return {
            f"{t}/mae": (o.squeeze(-1) - y[:, i]).abs().sum() * self.scale[i]
            for i, (t, o) in enumerate(zip(self.tasks, outputs, strict=True))
        }


def qm9(
    source: str | None = None,
    cache_dir: str | None = None,
    split_seed: int = 0,
    n_train: int = 110_000,
    n_val: int = 10_000,
    subset: int = 0,
    n_test: int = 0,
    eval_split: str = "test",
) -> Problem:
    """The ``qm9`` problem: the 11 targets in the standard order (mu first); [data] as
    :class:`QM9Problem`.
    """
    return QM9Problem(
        source,
        cache_dir,
        split_seed,
        n_train,
        n_val,
        subset,
        n_test,
        eval_split,
        tasks=STANDARD_ORDER,
    )


def qm9_u0(
    source: str | None = None,
    cache_dir: str | None = None,
    split_seed: int = 0,
    n_train: int = 110_000,
    n_val: int = 10_000,
    subset: int = 0,
    n_test: int = 0,
    eval_split: str = "test",
) -> Problem:
    """The ``qm9-u0`` problem: U0 first (the primary of ``primary-aux``), then the others in
    standard order.
    """
    return QM9Problem(
        source, cache_dir, split_seed, n_train, n_val, subset, n_test, eval_split, tasks=U0_FIRST
    )
