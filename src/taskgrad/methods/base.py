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

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .._stateful import Stateful
from ..solvers import check_finite, check_float, check_gram

__all__ = ["Weighting", "check_losses"]

_INPUTS = ("gram", "losses")

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

    Subclasses implement :meth:`compute` with typed keyword arguments for what they read:
    ``compute(self, *, gram: Tensor)``, ``compute(self, *, losses: Tensor)`` or both; ``needs``
    is derived from the required ones (an optional input is ``losses: Tensor | None = None``;
    a class may still set ``needs`` itself, e.g. per instance). The base class validates the
    inputs, calls :meth:`compute` with the ones it accepts, and checks the result's shape. Inputs in
    float16 or bfloat16 are computed in float32 and the weights returned in the input's dtype.
    Stateless methods inherit ``state_dict() == {}`` and a ``repr`` of their public attributes
    from :class:`~taskgrad._stateful.Stateful`; stateful ones override the state methods.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"gram"})
    _compute_accepts: ClassVar[frozenset[str]] = frozenset(_INPUTS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compute = cls.__dict__.get("compute")
        if compute is None:
            return
        params = inspect.signature(compute).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            cls._compute_accepts = frozenset(_INPUTS)
            return
        cls._compute_accepts = accepts = frozenset(n for n in _INPUTS if n in params)

        # callers (a subclass's super().compute(gram=..., losses=...)) may pass both inputs: the
        # ones this signature does not take are dropped
        @functools.wraps(compute)
        def _compute(self: Weighting, **inputs: Any) -> Tensor:
            return compute(
                self, **{n: v for n, v in inputs.items() if n in accepts or n not in _INPUTS}
            )

        cls.compute = _compute
        required = frozenset(
            n
            for n in cls._compute_accepts
            # typed and not optional (unannotated or ``Tensor | None`` is the older, both-inputs
            # form)
            if params[n].default is params[n].empty
            and params[n].annotation is not params[n].empty
            and "None" not in str(params[n].annotation)
        )
        if "needs" not in cls.__dict__ and required:
            cls.needs = required
        elif (
            isinstance(cls.needs, (set, frozenset))
            and required - cls.needs
            and "jacobian" not in cls.needs
        ):
            raise TypeError(
                f"{cls.__name__}.compute requires {sorted(required)} but {cls.__name__}.needs is "
                f"{sorted(cls.needs)}; declare the same inputs in both (or drop needs)."
            )

    if TYPE_CHECKING:
        # Each subclass takes, as keyword arguments, only the inputs it reads (its own signature);
        # no single base signature admits all of them as overrides, so the type says only that
        # compute takes keyword inputs and returns the weights. Callers go through __call__.
        compute: Callable[..., Tensor]
    else:

        @abstractmethod
        def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
            """Weights (..., k) from the validated inputs (only those named in the signature)."""

    def __call__(self, gram: Tensor | None = None, *, losses: Tensor | None = None) -> Tensor:
        """Validate the inputs named in ``needs`` and return the weights (..., k)."""
        out_dtype = next(
            (x.dtype for x in (gram, losses) if x is not None and x.dtype in _REDUCED), None
        )
        gram, losses = _widen(gram), _widen(losses)
        k = None
        if "gram" in self.needs:
            if gram is None:
                raise ValueError(
                    f"{type(self).__name__} needs the Gram matrix: call it with gram=G."
                )
            k = check_gram(gram)
        if "losses" in self.needs:
            if losses is None:
                raise ValueError(
                    f"{type(self).__name__} needs the task losses: call it with losses=L."
                )
            k = check_losses(losses, k)
        if gram is not None and losses is not None and gram.shape[-1] != losses.shape[-1]:
            raise ValueError(
                f"gram is for {gram.shape[-1]} tasks but losses has {losses.shape[-1]}; pass one "
                "entry per task to both."
            )
        given = {"gram": gram, "losses": losses}
        w = self.compute(**{n: given[n] for n in self._compute_accepts})
        if k is not None and w.shape[-1] != k:
            raise RuntimeError(
                f"{type(self).__name__} returned {w.shape[-1]} weights for {k} tasks."
            )
        return w if out_dtype is None else w.to(out_dtype)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Direction d = Jᵀ w(J Jᵀ) for an explicit Jacobian J of shape (k, P) (or (..., k, P))."""
        check_float("jacobian", jacobian)
        if jacobian.dim() < 2:
            raise ValueError(
                "jacobian must have shape (k, P): one row per task gradient, got "
                f"{tuple(jacobian.shape)}."
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
