"""taskgrad under torch.distributed / DistributedDataParallel (gloo on CPUs, NCCL on GPUs).

* :class:`DistributedStep`: one all-reduce of [bad-rank flag, k losses, Gram payload] per step
  gives every rank the global batch's weights; then the usual DDP backward of Σ wᵢLᵢ.
* :class:`DistributedSource`: any gradient source as the Gram of L̄ = (1/R) Σ_r Lʳ
  (representation: k² numbers; sketch: k·r; full parameters: k·P).
* :func:`run_on_ranks`: start R local processes with a hard time limit (tests, benchmarks).
"""

from .comm import (
    Traffic,
    all_reduce_sum,
    assert_identical,
    assert_in_sync,
    is_distributed,
    rank,
    world_size,
)
from .launch import free_port, run_on_ranks
from .sources import DistributedSource, local_jacobian
from .step import AllReduce, DistributedStep, DistributedStepResult, FeatureHook

__all__ = [
    "AllReduce",
    "DistributedSource",
    "DistributedStep",
    "DistributedStepResult",
    "FeatureHook",
    "Traffic",
    "all_reduce_sum",
    "assert_identical",
    "assert_in_sync",
    "free_port",
    "is_distributed",
    "local_jacobian",
    "rank",
    "run_on_ranks",
    "world_size",
]
