"""Flat views of parameter tuples: θ ↔ one vector of P entries (optionally with a batch dim)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor] | None = None) -> Tensor:
    """Concatenate tensors into one (P,) vector; a None entry is read as zeros shaped like
    ``like``.
    """
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None:
                raise ValueError(f"entry {i} is None and no template was given.")
            parts.append(torch.zeros(like[i].numel(), dtype=like[i].dtype, device=like[i].device))
        else:
            parts.append(t.reshape(-1))
    return torch.cat(parts)


def flatten_batched(tensors: Sequence[Tensor | None], m: int, like: Sequence[Tensor]) -> Tensor:
    """Concatenate (m, *shape) tensors into one (m, P) matrix; None entries are zeros."""
    parts = []
    for t, p in zip(tensors, like, strict=True):
        if t is None:
            parts.append(torch.zeros(m, p.numel(), dtype=p.dtype, device=p.device))
        else:
            parts.append(t.reshape(m, -1))
    return torch.cat(parts, dim=1)


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Split a (P,) vector (or an (m, P) matrix) into tensors shaped like ``like`` (with the m
    dim).
    """
    total = sum(p.numel() for p in like)
    if flat.shape[-1] != total:
        raise ValueError(
            f"expected a vector of {total} entries (the parameter count), got {flat.shape[-1]}."
        )
    lead = flat.shape[:-1]
    out = []
    start = 0
    for p in like:
        n = p.numel()
        out.append(flat[..., start : start + n].reshape(*lead, *p.shape))
        start += n
    return tuple(out)


def check_vectors(vectors: Sequence[Tensor], params: Sequence[Tensor], batched: bool) -> int:
    """Check that ``vectors`` matches ``params`` in number and shape (with a leading batch dim m
    when ``batched``); return m (1 when not batched).
    """
    if len(vectors) != len(params):
        raise ValueError(
            f"got {len(vectors)} vector tensors for {len(params)} parameters; pass one tensor per "
            "parameter (a tuple shaped like params)."
        )
    m = 1
    for i, (v, p) in enumerate(zip(vectors, params, strict=True)):
        if not isinstance(v, Tensor):
            raise TypeError(f"vectors[{i}] is a {type(v).__name__}, not a torch.Tensor.")
        want = p.shape if not batched else (v.shape[0] if v.dim() else -1, *p.shape)
        if tuple(v.shape) != tuple(want):
            extra = (
                " (batched=True: a leading dim m of vectors, the same for all)" if batched else ""
            )
            raise ValueError(
                f"vectors[{i}] has shape {tuple(v.shape)} but parameter {i} has shape "
                f"{tuple(p.shape)}{extra}."
            )
        if batched:
            if i == 0:
                m = v.shape[0]
            elif v.shape[0] != m:
                raise ValueError(f"vectors[{i}] has batch size {v.shape[0]}, vectors[0] has {m}.")
    return m
