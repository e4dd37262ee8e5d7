"""Input checks shared by the solvers: shapes, dtypes, symmetry and finiteness of Gram matrices."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def check_float(name: str, x: Tensor) -> None:
    """Raise TypeError unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}; "
            f"convert it with {name}.double() or {name}.float()."
        )


def check_finite(name: str, x: Tensor) -> None:
    """Raise FloatingPointError when ``x`` holds NaN or Inf (this synchronizes with the device)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(
            f"{name} contains {n_bad} non-finite value(s) (NaN or Inf). The task gradients that "
            "produced it overflowed or a loss is NaN; check the losses, lower the learning rate, "
            "or use a GradScaler-style skip (taskgrad.backward(..., nonfinite='skip'))."
        )


def check_gram(G: Tensor, *, name: str = "G", check_values: bool = True) -> int:
    """Validate a (batched) Gram matrix of shape (..., k, k) and return k.

    Checks the shape, the dtype and, when ``check_values``, finiteness and symmetry
    (|G - Gᵀ| ≤ 1e-5·max|G| in float32, 1e-10·max|G| in float64).
    """
    check_float(name, G)
    if G.dim() < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., k, k) with square trailing dimensions, got "
            f"{tuple(G.shape)}. Pass the Gram matrix J @ J.T of the task gradients, not J."
        )
    if G.shape[-1] == 0:
        raise ValueError(f"{name} has k = 0 tasks; at least one task is needed.")
    if check_values and G.numel() > 0:  # an empty batch (0, k, k) has nothing to check
        check_finite(name, G)
        scale = G.abs().amax().clamp_min(torch.finfo(G.dtype).tiny)
        asym = (G - G.transpose(-1, -2)).abs().amax()
        rtol = 1e-5 if G.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
        if bool(asym > rtol * scale):
            raise ValueError(
                f"{name} is not symmetric: max |G - Gᵀ| = {float(asym):.3g} against max |G| = "
                f"{float(scale):.3g}. A Gram matrix J Jᵀ is symmetric; symmetrize it with "
                f"({name} + {name}.mT) / 2 if the asymmetry is rounding."
            )
        diag = torch.diagonal(G, dim1=-2, dim2=-1)
        if bool((diag < -rtol * scale).any()):
            raise ValueError(
                f"{name} has a negative diagonal entry; a Gram matrix has squared norms "
                "‖g_i‖² ≥ 0 on its diagonal."
            )
    return G.shape[-1]


def check_nonneg(name: str, value: object) -> float:
    """Return ``value`` as a float after checking that it is a finite real number ≥ 0.

    Raises TypeError for a non-number (bools and tensors included) and ValueError for NaN,
    ±inf or a negative value, naming the parameter and its valid range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number ≥ 0 (a Python float or int), "
            f"got {type(value).__name__} {value!r}."
        )
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}.")
    return v


def check_max_iter(value: object, name: str = "max_iter") -> int | None:
    """Return ``value`` after checking that it is None or an int ≥ 1 (a cap on iterations)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be None (the default cap) or an int ≥ 1, "
            f"got {type(value).__name__} {value!r}."
        )
    if value < 1:
        raise ValueError(f"{name} must be an int ≥ 1 (or None for the default cap), got {value!r}.")
    return int(value)


def compute_dtype_for(x: Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the solvers compute in: ``compute_dtype`` if given, else float64 on the CPU and
    the input's dtype on other devices; reduced precisions (float16, bfloat16) become float32,
    which LAPACK-style factorizations support on every device.
    """
    if compute_dtype is not None:
        if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
            raise TypeError(
                "compute_dtype must be a floating torch.dtype (torch.float32 or torch.float64), "
                f"got {compute_dtype!r}."
            )
        work = compute_dtype
    elif x.device.type == "cpu":
        work = torch.float64
    else:
        work = x.dtype
    return work if work in (torch.float32, torch.float64) else torch.float32
