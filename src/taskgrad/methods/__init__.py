"""Methods: turn a Gram matrix and/or task losses into task weights (see :class:`Weighting`)."""

from .base import Weighting, check_losses
from .core import MGDA, Mean, PrimaryAux

__all__ = ["MGDA", "Mean", "PrimaryAux", "Weighting", "check_losses"]
