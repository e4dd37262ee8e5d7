"""Small helpers shared by the method zoo: working dtype, norms from a Gram diagonal, randomness,
state dictionaries and learnable per-task parameters with their own optimizer.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "LearnedTaskParameter",
    "check_generator",
    "check_positive_losses",
    "clip_combination",
    "clone_state",
    "diag_norms",
    "flat_gram",
    "work_dtype",
]


def work_dtype(x: Tensor) -> torch.dtype:
    """float64 on the CPU (as cheap as float32 at these sizes); the input's dtype on a GPU."""
    if x.device.type == "cpu" or x.dtype == torch.float64:
        return torch.float64
    return torch.float32


def flat_gram(G: Tensor) -> tuple[Tensor, torch.Size]:
    """(B, k, k) symmetrized Gram in the working dtype, and the batch shape to restore."""
    k = G.shape[-1]
    Gb = G.to(work_dtype(G)).reshape(-1, k, k)
    return 0.5 * (Gb + Gb.transpose(-1, -2)), G.shape[:-2]


def diag_norms(G: Tensor) -> Tensor:
    """σᵢ = ‖gᵢ‖ = √G_ii (clamped at 0 against rounding), shape (..., k)."""
    return torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def clip_combination(w: Tensor, G: Tensor, max_norm: float) -> Tensor:
    """w (..., k) scaled down so that ‖Jᵀw‖ = √(wᵀGw) ≤ ``max_norm`` (unchanged below it)."""
    norm = torch.einsum("...i,...ij,...j->...", w, G, w).clamp_min(0).sqrt()
    factor = torch.where(
        norm > max_norm,
        max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny),
        torch.ones_like(norm),
    )
    return w * factor.unsqueeze(-1)


def check_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """Validate an optional ``torch.Generator`` (used for every random draw of a method)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}."
        )
    return generator


def own_generator(generator: torch.Generator | None) -> torch.Generator:
    """The method's own generator: ``generator``, or (None) a new CPU generator seeded from
    torch's global RNG, so ``torch.manual_seed`` still fixes a run and ``state_dict()`` holds
    every random state the method uses (it resumes bit-identically).
    """
    check_generator(generator)
    if generator is not None:
        return generator
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


def check_positive_losses(name: str, losses: Tensor, offset: float = 0.0) -> None:
    """Raise a clear error unless every loss exceeds ``offset`` (methods that take logs/ratios)."""
    if bool((losses <= offset).any()):
        raise ValueError(
            f"{name} needs every task loss > {offset:g} (it divides by or takes the log of the "
            f"losses), got min {float(losses.min()):.4g}. Shift the losses to be positive (e.g. "
            "add a constant) or use a method that accepts any sign."
        )


def clone_state(x: Any) -> Any:
    """A deep copy of a state value with tensors cloned (so later steps cannot alter it)."""
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone_state(v) for v in x)
    return copy.deepcopy(x)


def generator_state(generator: torch.Generator | None) -> Tensor | None:
    return None if generator is None else generator.get_state()


def set_generator_state(generator: torch.Generator | None, state: Tensor | None) -> None:
    if generator is not None and state is not None:
        generator.set_state(state)


class LearnedTaskParameter:
    """A per-task parameter tensor ξ (shape of the losses, created lazily) updated by its own
    optimizer: ``step(grad)`` sets ξ.grad = grad and takes one step of SGD or Adam with
    learning rate ``lr`` (torch.optim, so the update is exactly torch's).
    """

    def __init__(
        self,
        init: float,
        lr: float,
        optimizer: Literal["sgd", "adam"] = "sgd",
        weight_decay: float = 0.0,
    ) -> None:
        from ._validate import check_choice, check_real

        self.init = check_real("the learned parameter", "init", init)
        self.lr = check_real("the learned parameter", "lr", lr, low=0.0)
        self.optimizer = check_choice(
            "the learned parameter", "optimizer", optimizer, ("sgd", "adam")
        )
        self.weight_decay = check_real(
            "the learned parameter", "weight_decay", weight_decay, low=0.0
        )
        self.value: Tensor | None = None
        self._opt: torch.optim.Optimizer | None = None

    def get(self, like: Tensor) -> Tensor:
        """The current ξ (created as ``init`` with the shape, dtype and device of ``like``)."""
        if self.value is None:
            self.value = torch.full_like(like, self.init, dtype=like.dtype).requires_grad_(True)
        elif self.value.shape != like.shape:
            raise ValueError(
                f"the losses changed shape from {tuple(self.value.shape)} to {tuple(like.shape)}; "
                "call reset() before changing the number of tasks."
            )
        return self.value

    def _optim(self) -> torch.optim.Optimizer:
        if self._opt is None:
            assert self.value is not None
            if self.optimizer == "sgd":
                self._opt = torch.optim.SGD(
                    [self.value], lr=self.lr, weight_decay=self.weight_decay
                )
            else:
                self._opt = torch.optim.Adam(
                    [self.value], lr=self.lr, weight_decay=self.weight_decay
                )
        return self._opt

    def step(self, grad: Tensor) -> None:
        """One optimizer step on ξ with the given gradient."""
        assert self.value is not None
        self.value.grad = grad.detach().to(self.value.dtype).clone()
        self._optim().step()
        self.value.grad = None

    def reset(self) -> None:
        self.value = None
        self._opt = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": None if self.value is None else self.value.detach().clone(),
            "optim": None if self._opt is None else clone_state(self._opt.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if state.get("value") is not None:
            self.value = state["value"].detach().clone().requires_grad_(True)
            if state.get("optim") is not None:
                self._optim().load_state_dict(clone_state(state["optim"]))
