"""Noisy labels with a small clean set: the clean losses as primary/auxiliary constraints.

* :class:`CleanSetTrainer`: one step of ``primary_aux`` (noisy primary, each clean batch a
  constraint), or the baselines ``noisy``, ``clean``, ``sum`` and ``glmask`` (Gradient-guided
  Loss Masking, arXiv 2102.13549).
* :func:`symmetric_noise`, :func:`pair_flip_noise`: synthetic label corruption.
"""

from .noise import corrupt_labels, pair_flip_noise, symmetric_noise
from .trainer import STRATEGIES, CleanSetTrainer, OptimizerLike, StepResult, glmask_alignment

__all__ = [
    "STRATEGIES",
    "CleanSetTrainer",
    "OptimizerLike",
    "StepResult",
    "corrupt_labels",
    "glmask_alignment",
    "pair_flip_noise",
    "symmetric_noise",
]
