"""How Gram-based methods run: the batched torch path or compiled host kernels (``impl``).

* ``"torch"``: batched torch operators on the device of G (the reference path);
* ``"numba"``: compiled loops on the host, one problem at a time (:mod:`.kernels`), the same
  algorithm with the same decisions and tolerances in float64. At k ≈ 40 a solve is a few
  hundred small operators on the torch path (~10 µs of overhead each) and well under a
  millisecond compiled.
* ``"auto"`` (default): ``"numba"`` for a Gram matrix on the CPU; on a GPU ``"numba"`` when the
  batch is small (B·k³ ≤ 2²²: the k×k copy to the host and its single synchronization are
  cheaper than the torch path's sequence of kernel launches), else ``"torch"``.

Also here: the host copies in and out, the shared MGDA weights (:func:`min_norm_weights`),
random task orders and softmax draws, and preference vectors.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..solvers import min_norm_simplex

__all__ = [
    "GPU_HOST_MAX_WORK",
    "HAVE_NUMBA",
    "Impl",
    "check_impl",
    "check_pref",
    "draw_permutations",
    "from_host",
    "host",
    "host_gram",
    "host_nnls",
    "host_pref",
    "kernel",
    "min_norm_weights",
    "raise_not_pd",
    "random_softmax_weights",
    "use_host",
]

Impl = Literal["auto", "numba", "torch"]
_IMPLS: tuple[Impl, ...] = ("auto", "numba", "torch")

# on a GPU, "auto" runs the host kernels when B·k³ is at most this (≈ a few ms of host work)
GPU_HOST_MAX_WORK = 1 << 22

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def kernel(name: str) -> ModuleType:
    """The compiled kernel module :mod:`taskgrad.methods.kernels.<name>`, imported on first use
    (importing numba costs ~0.3 s, which ``import taskgrad`` does not pay until a kernel runs).
    """
    return importlib.import_module(f"{__package__}.kernels.{name}")


def check_impl(impl: str) -> Impl:
    """Validate ``impl`` ("auto", "numba" or "torch") and return it as an :data:`Impl`."""
    valid: Impl | None = next((c for c in _IMPLS if c == impl), None)
    if valid is None:
        raise ValueError(f"impl must be 'auto', 'numba' or 'torch', got {impl!r}.")
    if valid == "numba" and not HAVE_NUMBA:
        raise ImportError(
            "impl='numba' needs numba (pip install numba); use impl='torch' or 'auto'."
        )
    return valid


def use_host(impl: str, G: Tensor) -> bool:
    """Whether the compiled host kernels solve the problems of G (..., k, k) (see the module
    doc).
    """
    if impl == "torch" or not HAVE_NUMBA:
        return False
    if impl == "numba":
        return True
    if G.device.type != "cpu" and G.numel() * G.shape[-1] > GPU_HOST_MAX_WORK:
        return False
    # numba found but not importable (e.g. an unsupported NumPy): the kernels would run as plain
    # Python, 10-20x slower than the torch path, so "auto" keeps the torch path
    return bool(kernel("common").HAVE_NUMBA)


def host(x: Tensor) -> np.ndarray:
    """A float64 C-contiguous NumPy copy/view of x on the host (one copy + sync from a GPU)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())


def host_gram(G: Tensor) -> np.ndarray:
    """(B, k, k) float64 symmetrized copy of G on the host."""
    k = G.shape[-1]
    a = G.detach().reshape(-1, k, k).to("cpu", torch.float64).numpy()
    return 0.5 * (a + a.transpose(0, 2, 1))


def from_host(
    w: np.ndarray,
    shape: tuple[int, ...] | torch.Size,
    like: Tensor,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The host result w as a tensor of ``shape`` on the device of ``like``, in ``dtype``
    (default: that of ``like``).
    """
    return torch.from_numpy(w).to(device=like.device, dtype=dtype or like.dtype).reshape(shape)


def raise_not_pd(status: np.ndarray) -> None:
    """Raise LinAlgError where a kernel reported an indefinite free block."""
    if bool((status == kernel("common").NOT_PD).any()):
        raise torch.linalg.LinAlgError(
            "a free block is not positive definite even with a ridge of 1e-2."
        )


def host_nnls(Q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """λ[b, m] ≥ 0 minimizing ½λᵀQ[b]λ + C[b, m]ᵀλ (Q (B, k, k), C (B, m, k)) by the compiled
    port of :func:`taskgrad.solvers.nnls` (float64, on the host).
    """
    X, status = kernel("common").nnls_rows(Q, np.ascontiguousarray(C), 10 * Q.shape[-1] + 50)
    raise_not_pd(status)
    return X


def check_pref(pref: Tensor | None, k: int, like: Tensor) -> Tensor:
    """The preference vector (default 1/k) with the dtype and device of ``like``."""
    if pref is None:
        return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    if pref.dim() != 1 or pref.shape[0] != k:
        raise ValueError(
            f"pref_vector must have shape ({k},) (one weight per task), got {tuple(pref.shape)}."
        )
    return pref.to(dtype=like.dtype, device=like.device)


def host_pref(pref: Tensor | None, k: int) -> np.ndarray:
    """:func:`check_pref` as a float64 NumPy vector."""
    if pref is None:
        return np.full(k, 1.0 / k)
    return host(check_pref(pref, k, pref))


def draw_permutations(
    B: int, k: int, n: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(B, k, n) long: for each problem b and each task i, ``torch.randperm(n)`` in that order
    (the same draws as one ``randperm`` per task, as TorchJD and the papers do).
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perms = [torch.randperm(n, generator=generator, device=gen_device) for _ in range(B * k)]
    if not perms:
        return torch.zeros(B, k, n, dtype=torch.long, device=device)
    return torch.stack(perms).reshape(B, k, n).to(device)


def random_softmax_weights(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """softmax of standard normal draws along the last dim (RLW's default distribution)."""
    dev = generator.device if generator is not None else like.device
    z = torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)
    return torch.softmax(z, dim=-1)


def min_norm_weights(G: Tensor, impl: Impl = "auto") -> Tensor:
    """MGDA's α in the simplex minimizing αᵀGα for G (..., k, k), in G's dtype: the solvers'
    :func:`~taskgrad.solvers.min_norm_simplex` (``impl="torch"``) or its compiled port.
    """
    if not use_host(check_impl(impl), G):
        return min_norm_simplex(G, check_input=False)
    wn, status = kernel("common").min_norm(host_gram(G), 10 * G.shape[-1] + 50)
    raise_not_pd(status)
    return from_host(wn, G.shape[:-1], G)
