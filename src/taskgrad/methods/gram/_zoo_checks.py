"""Validation and small numeric helpers shared by the methods ported from TorchJD and LibMTL:
range checks on hyper-parameters with errors that name the parameter, and the Euclidean
projection onto the probability simplex.
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

from .._validate import interval, outside

__all__ = [
    "check_cross_matrix",
    "check_int",
    "check_max_norm",
    "check_real",
    "check_vector",
    "project_simplex",
    "simplex_state",
    "task_vector",
]


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, or a ValueError naming ``name`` and the accepted range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if math.isnan(v) or outside(v, low, high, low_open, high_open):
        rng = interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must be in {rng}, got {value!r}.")
    return v


def check_int(name: str, value: object, *, low: int) -> int:
    """``value`` as an int ≥ ``low``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int ≥ {low}, got {type(value).__name__} {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}.")
    return value


def check_max_norm(value: float | None) -> float | None:
    """A gradient-clipping norm: None (off) or a positive finite number."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"max_norm must be a positive finite number or None (no clipping), got {value!r}."
        )
    return float(value)


@overload
def check_vector(name: str, value: Tensor, *, nonnegative: bool = ...) -> Tensor: ...


@overload
def check_vector(name: str, value: None, *, nonnegative: bool = ...) -> None: ...


@overload
def check_vector(name: str, value: Tensor | None, *, nonnegative: bool = ...) -> Tensor | None: ...


def check_vector(name: str, value: Tensor | None, *, nonnegative: bool = False) -> Tensor | None:
    """An optional 1-D finite float tensor (one entry per task), detached."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=torch.float64)
    if value.dim() != 1 or not value.is_floating_point():
        raise ValueError(
            f"{name} must be a 1-D floating-point tensor with one entry per task, got shape "
            f"{tuple(value.shape)} and dtype {value.dtype}."
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, got {value.tolist()}.")
    if nonnegative and bool((value < 0).any()):
        raise ValueError(f"{name} must be ≥ 0 entrywise, got {value.tolist()}.")
    return value.detach()


def check_length(name: str, value: Tensor, k: int) -> None:
    """Raise unless the per-task vector ``value`` has k entries."""
    if value.shape[-1] != k:
        raise ValueError(
            f"{name} has {value.shape[-1]} entries but there are {k} tasks; pass one per task."
        )


def task_vector(name: str, value: Tensor | None, k: int, default: float, like: Tensor) -> Tensor:
    """The per-task vector ``value`` (k,) in the dtype and device of ``like``, or ``default`` for
    every task when it is None; an error naming ``name`` when it has not k entries.
    """
    if value is None:
        return torch.full((k,), default, dtype=like.dtype, device=like.device)
    check_length(name, value, k)
    return value.to(dtype=like.dtype, device=like.device)


def project_simplex(y: Tensor) -> Tensor:
    """Euclidean projection of each row of y (..., k) onto {x ≥ 0, Σx = 1}: x = max(y − θ, 0),
    θ = (Σ_{j≤ρ} u_j − 1)/ρ for u = y sorted decreasingly and ρ the last j with u_j > θ_j.
    """
    k = y.shape[-1]
    u, _ = torch.sort(y, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    j = torch.arange(1, k + 1, dtype=y.dtype, device=y.device)
    active = u - css / j > 0
    rho = active.to(torch.long).cumsum(-1).argmax(-1, keepdim=True)  # last index where active
    theta = css.gather(-1, rho) / (rho + 1).to(y.dtype)
    return (y - theta).clamp_min(0.0)


def simplex_state(owner: str, held: Tensor | None, gram: Tensor) -> Tensor:
    """The simplex weights (...,) a stateful method holds, in the dtype and device of ``gram``
    (..., k, k): 1/k for every task before the first call; an error if they are for another shape.
    """
    if held is None:
        k = gram.shape[-1]
        return torch.full(gram.shape[:-1], 1.0 / k, dtype=gram.dtype, device=gram.device)
    if held.shape != gram.shape[:-1]:
        raise ValueError(
            f"{owner} holds weights for shape {tuple(held.shape)} but got a Gram matrix for "
            f"{tuple(gram.shape[:-1])}; call reset() before changing the number of tasks."
        )
    return held.to(dtype=gram.dtype, device=gram.device)


def check_cross_matrix(owner: str, A: Tensor) -> None:
    """Validate the (…, k, k) cross-batch matrix A = J₁J₂ᵀ of two independent mini-batches (square,
    floating point, finite; not necessarily symmetric).
    """
    if not isinstance(A, Tensor) or not A.is_floating_point():
        raise TypeError(
            f"{owner}: the cross-batch matrix must be a floating-point tensor, got "
            f"{type(A).__name__}."
        )
    if A.dim() < 2 or A.shape[-1] != A.shape[-2] or A.shape[-1] == 0:
        raise ValueError(
            f"{owner}: the cross-batch matrix must have shape (..., k, k) (J₁ @ J₂.T of two "
            "mini-batches), "
            f"got {tuple(A.shape)}."
        )
    if not bool(torch.isfinite(A).all()):
        raise FloatingPointError(f"{owner}: the cross-batch matrix has non-finite entries.")
