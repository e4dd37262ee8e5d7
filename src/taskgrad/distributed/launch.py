"""Start R local processes joined in a gloo (CPU) or NCCL group, with a hard time limit.

``run_on_ranks(fn, world_size=2, args=(...), timeout=60)`` spawns R processes that each call
``fn(rank, world_size, *args)`` after ``init_process_group`` on a free localhost port; a rank
that raises makes the call raise, and a run that exceeds ``timeout`` seconds (a hang in a
collective) has its processes killed and raises ``TimeoutError`` instead of blocking. ``fn``
must be importable by module path (a top-level function), as for ``torch.multiprocessing``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_on_ranks"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    threads: int,
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout),
    )
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple[Any, ...] = (),
    *,
    backend: str = "gloo",
    timeout: float = 60.0,
    threads: int = 1,
    start_method: str | None = None,
) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes; raise on failure.

    ``timeout`` bounds the whole run (and every collective); ``threads`` is each rank's
    ``torch.set_num_threads``. Results come back through files or queues that ``fn`` writes.
    ``start_method``: None picks "fork" on Linux while CUDA is not initialized (the children
    inherit the imported modules, saving a Python + torch start-up per rank), else "spawn".
    """
    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}.")
    if start_method is None:
        fork_ok = sys.platform.startswith("linux") and not torch.cuda.is_initialized()
        start_method = "fork" if fork_ok else "spawn"
    port = free_port()
    ctx = mp.start_processes(
        _entry,
        args=(fn, world_size, port, backend, timeout, threads, args),
        nprocs=world_size,
        join=False,
        start_method=start_method,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{world_size} ranks did not finish within {timeout:.0f} s (a collective waits "
                    "for a "
                    "rank that never joined it?); the processes were killed."
                )
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        for p in ctx.processes:
            p.join(5)
