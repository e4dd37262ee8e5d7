"""The `Weighting` contract: inputs (Gram matrix, losses, …) -> task weights w.

A method turns what it needs about the k tasks into weights w (..., k); the update direction is
d = Jᵀw, applied by one backward of Σ wᵢLᵢ (see :func:`taskgrad.backward`).

Each method declares what it needs in ``needs``:

* ``"gram"``: the Gram matrix G = J Jᵀ of the task gradients, shape (..., k, k);
* ``"losses"``: the detached task losses, shape (..., k).

:func:`taskgrad.backward` computes exactly what the method needs (no Gram for a loss-only
method) and calls ``method(gram=..., losses=...)``. Stateful methods keep their state in
attributes, advance it once per call, and expose ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from .._stateful import Stateful
from ..solvers._checks import check_finite, check_float, check_gram

__all__ = ["Weighting", "check_losses"]

# reduced precisions are computed in float32 (and the weights returned in the input's dtype)
_REDUCED = (torch.float16, torch.bfloat16)


def _widen(x: Tensor | None) -> Tensor | None:
    return x.float() if x is not None and x.dtype in _REDUCED else x


def check_losses(losses: Tensor, k: int | None = None) -> int:
    """Validate a (..., k) tensor of task losses and return k."""
    check_float("losses", losses)
    if losses.dim() < 1 or losses.shape[-1] == 0:
        raise ValueError(f"losses must have shape (..., k) with k ≥ 1, got {tuple(losses.shape)}.")
    if k is not None and losses.shape[-1] != k:
        raise ValueError(f"losses has {losses.shape[-1]} tasks but the Gram matrix has {k}.")
    check_finite("losses", losses)
    return losses.shape[-1]


class Weighting(Stateful, ABC):
    """Base class of every method: ``w = method(gram=G, losses=L)``.

    Subclasses set ``needs`` and implement :meth:`compute`. The base class validates inputs,
    calls :meth:`compute`, and checks that the result is finite and of shape (..., k). Inputs in
    float16 or bfloat16 are computed in float32 and the weights returned in the input's dtype.
    Stateless methods inherit ``state_dict() == {}`` and a ``repr`` of their public attributes
    from :class:`~taskgrad._stateful.Stateful`; stateful ones override the state methods.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"gram"})

    @abstractmethod
    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        """Weights (..., k) from the validated inputs this method declared in ``needs``."""

    def __call__(self, gram: Tensor | None = None, *, losses: Tensor | None = None) -> Tensor:
        """Validate the inputs named in ``needs`` and return the weights (..., k)."""
        out_dtype = next((x.dtype for x in (gram, losses) if x is not None and x.dtype in _REDUCED), None)
        gram, losses = _widen(gram), _widen(losses)
        k = None
        if "gram" in self.needs:
            if gram is None:
                raise ValueError(f"{type(self).__name__} needs the Gram matrix: call it with gram=G.")
            k = check_gram(gram)
        if "losses" in self.needs:
            if losses is None:
                raise ValueError(f"{type(self).__name__} needs the task losses: call it with losses=L.")
            k = check_losses(losses, k)
        if gram is not None and losses is not None and gram.shape[-1] != losses.shape[-1]:
            raise ValueError(
                f"gram is for {gram.shape[-1]} tasks but losses has {losses.shape[-1]}; pass one "
                "entry per task to both."
            )
        w = self.compute(gram=gram, losses=losses)
        if k is not None and w.shape[-1] != k:
            raise RuntimeError(f"{type(self).__name__} returned {w.shape[-1]} weights for {k} tasks.")
        return w if out_dtype is None else w.to(out_dtype)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Direction d = Jᵀ w(J Jᵀ) for an explicit Jacobian J of shape (k, P) (or (..., k, P))."""
        check_float("jacobian", jacobian)
        if jacobian.dim() < 2:
            raise ValueError(
                f"jacobian must have shape (k, P): one row per task gradient, got {tuple(jacobian.shape)}."
            )
        check_finite("jacobian", jacobian)
        J = jacobian
        Jd = J.double() if J.device.type == "cpu" else J
        G = (Jd @ Jd.transpose(-1, -2)).to(J.dtype)
        G = 0.5 * (G + G.transpose(-1, -2))
        w = self(gram=G if "gram" in self.needs else None, losses=losses)
        return (w.unsqueeze(-2) @ J).squeeze(-2)

    def reset(self) -> None:
        """Forget any state (stateless methods have none)."""


def _uniform(like: Tensor, k: int) -> Tensor:
    return torch.full((*like.shape, k), 1.0 / k, dtype=like.dtype, device=like.device)
