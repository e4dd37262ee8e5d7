"""Input checks shared by the solvers: shapes, dtypes, symmetry and finiteness of Gram matrices."""

from __future__ import annotations

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
    if check_values:
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
