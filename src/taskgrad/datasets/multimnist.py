"""MultiMNIST and MultiFashion (Sener & Koltun, 2018), built deterministically and cached.

Each example overlays two source images on a 36×36 canvas: image a with its top-left corner at
(1, 1) and image b at (7, 7) (offset 6 down and right; their 34×34 union is centred), combined by
the pixel-wise maximum and resized to 28×28 (bilinear, antialiased). The tasks are the class of
the top-left image (task 0, "left") and of the bottom-right one (task 1, "right").
For split s with N source images, a = i and b = π(i) for a permutation π drawn from
``numpy.random.default_rng(seed)`` (seed 0 for train, 1 for test by default), so the build is a
pure function of the source data and the seeds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .images import ImageDataset, load_fashion_mnist, load_mnist

__all__ = ["MultiDigits", "build_multi", "compose_pairs", "default_cache_dir", "load_multimnist"]

CANVAS = 36
OFFSET = 6
OUT_SIZE = 28
_VERSION = 1


@dataclass(frozen=True)
class MultiDigits:
    """Train/test images (N, 28, 28) uint8 and labels (N, 2) int64 (left, right)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def default_cache_dir() -> Path:
    """``$TASKGRAD_CACHE`` or ``~/.cache/taskgrad``."""
    return Path(os.environ.get("TASKGRAD_CACHE", Path.home() / ".cache" / "taskgrad"))


def compose_pairs(a: np.ndarray, b: np.ndarray, out_size: int = OUT_SIZE) -> np.ndarray:
    """Overlay a (N, h, w) at (1, 1) and b at (1+6, 1+6) on a 36×36 canvas by pixel-wise max,
    then resize to out_size² (bilinear, antialiased); uint8 in, uint8 out.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"a and b must both be (N, h, w) with the same shape, got {a.shape} and {b.shape}."
        )
    n, h, w = a.shape
    if 1 + OFFSET + max(h, w) > CANVAS:
        raise ValueError(
            f"images of size {h}×{w} do not fit a {CANVAS}×{CANVAS} canvas with offset {OFFSET}."
        )
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, 1 : 1 + h, 1 : 1 + w] = a
    sub = canvas[:, 1 + OFFSET : 1 + OFFSET + h, 1 + OFFSET : 1 + OFFSET + w]
    np.maximum(sub, b, out=sub)
    t = torch.from_numpy(canvas).float().unsqueeze(1)
    r = torch.nn.functional.interpolate(
        t, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False
    )
    return r.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def _build_split(
    x: np.ndarray, y: np.ndarray, seed: int, chunk: int, progress, task
) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    out = np.empty((x.shape[0], OUT_SIZE, OUT_SIZE), dtype=np.uint8)
    for s in range(0, x.shape[0], chunk):
        e = min(s + chunk, x.shape[0])
        out[s:e] = compose_pairs(x[s:e], x[perm[s:e]])
        if progress is not None:
            progress.advance(task, e - s)
    return out, np.stack([y, y[perm]], axis=1).astype(np.int64)


def build_multi(
    source: ImageDataset,
    seeds: tuple[int, int] = (0, 1),
    chunk: int = 5000,
    show_progress: bool = True,
) -> MultiDigits:
    """Build the two-image data set from ``source`` (train with seeds[0], test with seeds[1])."""
    from rich.progress import Progress

    total = source.train_x.shape[0] + source.test_x.shape[0]
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("building two-image data set", total=total)
        trx, try_ = _build_split(source.train_x, source.train_y, seeds[0], chunk, progress, task)
        tex, tey = _build_split(source.test_x, source.test_y, seeds[1], chunk, progress, task)
    return MultiDigits(trx, try_, tex, tey)


def _fingerprint(ds: ImageDataset) -> str:
    h = hashlib.sha1()
    for arr in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr[:: max(1, arr.shape[0] // 997)]).tobytes())
    return h.hexdigest()[:12]


def load_multimnist(
    kind: Literal["mnist", "fashion"] = "mnist",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seeds: tuple[int, int] = (0, 1),
    show_progress: bool = True,
) -> MultiDigits:
    """MultiMNIST (``kind="mnist"``) or MultiFashion (``"fashion"``), from the cache when present.

    ``root``: directory of the source IDX files (default: the packaged MNIST / Fashion-MNIST,
    see :mod:`taskgrad.datasets.images`). The cache file name holds the source fingerprint and
    the seeds, so a different source or seed never reads a stale cache.
    """
    if kind not in ("mnist", "fashion"):
        raise ValueError(f"kind must be 'mnist' or 'fashion', got {kind!r}.")
    source = load_mnist(root) if kind == "mnist" else load_fashion_mnist(root)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"multi{kind}-v{_VERSION}-{_fingerprint(source)}-s{seeds[0]}-{seeds[1]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return MultiDigits(z["train_x"], z["train_y"], z["test_x"], z["test_y"])
    data = build_multi(source, seeds, show_progress=show_progress)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x, test_y=data.test_y
    )
    os.replace(tmp, path)
    return data
