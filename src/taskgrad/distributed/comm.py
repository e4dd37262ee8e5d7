"""Small collective helpers over a ``torch.distributed`` process group (gloo or NCCL).

Every helper degrades to the identity when ``torch.distributed`` is not initialized (one
process), so the same training code runs with and without DDP. Each helper is a collective:
every rank of the group must call it, in the same order, with tensors of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Traffic",
    "all_reduce_sum",
    "assert_identical",
    "assert_in_sync",
    "is_distributed",
    "world_size",
    "rank",
]


def is_distributed(group: Any = None) -> bool:
    """True when ``torch.distributed`` is initialized (then every helper is a collective)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Number of ranks R in ``group`` (1 without torch.distributed)."""
    return dist.get_world_size(group) if is_distributed(group) else 1


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (0 without torch.distributed)."""
    return dist.get_rank(group) if is_distributed(group) else 0


@dataclass
class Traffic:
    """Counts what the helpers sent: ``calls`` all-reduces and ``numel``/``bytes`` reduced.

    ``bytes`` is the payload size per rank; a ring all-reduce moves 2(R−1)/R times this over
    each rank's link.
    """

    calls: int = 0
    numel: int = 0
    bytes: int = 0
    log: list[tuple[str, int]] = field(default_factory=list)

    def add(self, what: str, t: Tensor) -> None:
        """Record one all-reduce of ``t``."""
        self.calls += 1
        self.numel += t.numel()
        self.bytes += t.numel() * t.element_size()
        self.log.append((what, t.numel()))

    def reset(self) -> None:
        """Zero the counters."""
        self.calls = self.numel = self.bytes = 0
        self.log.clear()


def all_reduce_sum(
    t: Tensor,
    group: Any = None,
    *,
    bucket_numel: int | None = None,
    traffic: Traffic | None = None,
    what: str = "",
) -> Tensor:
    """In-place Σ over ranks of the flat, contiguous tensor ``t`` (returned for chaining).

    ``bucket_numel`` splits a large tensor into all-reduces of at most that many entries (in a
    fixed order, so every rank issues the same sequence); None sends it in one call.
    """
    if not t.is_contiguous():
        raise ValueError("all_reduce_sum needs a contiguous tensor; call .contiguous() first.")
    if traffic is not None:
        traffic.add(what, t)
    if not is_distributed(group):
        return t
    flat = t.view(-1)
    if bucket_numel is None or flat.numel() <= bucket_numel:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        return t
    if bucket_numel < 1:
        raise ValueError(f"bucket_numel must be ≥ 1, got {bucket_numel}.")
    for start in range(0, flat.numel(), bucket_numel):
        dist.all_reduce(flat[start : start + bucket_numel], op=dist.ReduceOp.SUM, group=group)
    return t


def _spread(t: Tensor, group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(max over ranks, min over ranks) of ``t``, NaN-aware: NaN is compared as a marker."""
    x = t.detach().reshape(-1).to(torch.float64)
    nan = torch.isnan(x)
    x = torch.where(nan, torch.full_like(x, float("inf")), x)
    both = torch.cat([x, -x, nan.to(torch.float64), -nan.to(torch.float64)])
    if is_distributed(group):
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    n = x.numel()
    hi, neg_lo = both[:n], both[n : 2 * n]
    nan_hi, nan_neg_lo = both[2 * n : 3 * n], both[3 * n :]
    # a NaN on some ranks only shows as nan_hi = 1 and -nan_neg_lo = 0
    mismatch_nan = nan_hi != -nan_neg_lo
    return hi, -neg_lo, mismatch_nan


def assert_identical(t: Tensor, group: Any = None, *, what: str = "tensor") -> None:
    """Raise RuntimeError on every rank unless ``t`` is bitwise equal on all ranks (a collective).

    Compares the max and min over ranks of each entry (one all-reduce of 4·numel numbers).
    """
    if not is_distributed(group):
        return
    hi, lo, mismatch_nan = _spread(t, group)
    bad = (hi != lo) | mismatch_nan
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise RuntimeError(
            f"{what} differs across ranks (entry {i}: max {float(hi[i])!r}, min {float(lo[i])!r} "
            "over "
            f"{world_size(group)} ranks). Every rank must apply identical weights: seed every "
            "random generator the same on all ranks, and give every rank the same method state."
        )


def assert_in_sync(tensors: Any, group: Any = None, *, what: str = "parameters") -> None:
    """Raise on every rank unless all ``tensors`` (e.g. ``model.parameters()``) agree across
    ranks.
    """
    ts = [t.detach().reshape(-1) for t in tensors]
    if not ts:
        return
    assert_identical(torch.cat([t.to(torch.float64) for t in ts]), group, what=what)
