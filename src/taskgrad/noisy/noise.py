"""Synthetic label noise: symmetric and pair-flip corruption of integer labels."""

from __future__ import annotations

import numpy as np

__all__ = ["corrupt_labels", "pair_flip_noise", "symmetric_noise"]


def _check(y: np.ndarray, rate: float, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {y.shape} and dtype {y.dtype}."
        )
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate!r}.")
    if num_classes < 2 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"labels must lie in [0, {num_classes}) with num_classes ≥ 2.")
    return y


def symmetric_noise(
    y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(rate·n) labels, chosen uniformly, each to a uniformly drawn *other* class.

    Returns (noisy labels, flipped mask). The realized noise rate equals ``rate`` (up to rounding);
    the convention that also allows "flipping" to the true class would give rate·(C−1)/C.
    """
    y = _check(y, rate, num_classes)
    n = y.shape[0]
    idx = rng.choice(n, size=int(round(rate * n)), replace=False)
    out = y.copy()
    shift = rng.integers(1, num_classes, size=idx.shape[0])
    out[idx] = (y[idx] + shift) % num_classes
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return out, mask


def pair_flip_noise(
    y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pair flipping (Han et al. 2018): exactly round(rate·n) labels c become (c + 1) mod C."""
    y = _check(y, rate, num_classes)
    n = y.shape[0]
    idx = rng.choice(n, size=int(round(rate * n)), replace=False)
    out = y.copy()
    out[idx] = (y[idx] + 1) % num_classes
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return out, mask


def corrupt_labels(
    y: np.ndarray, kind: str, rate: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on ``kind``: "symmetric" or "pair" (see the two functions)."""
    if kind == "symmetric":
        return symmetric_noise(y, rate, num_classes, rng)
    if kind == "pair":
        return pair_flip_noise(y, rate, num_classes, rng)
    raise ValueError(f"noise kind must be 'symmetric' or 'pair', got {kind!r}.")
