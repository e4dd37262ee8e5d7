"""Coefficient-free regularization: weight decay (L2) and L1 as a primary/auxiliary constraint.

* :func:`coefficient_free_direction`: u = g + relu(−⟨g, a⟩)/‖a‖² · a (a = θ or sign(θ)), per group.
* :class:`CoefficientFreeDecay`: wraps SGD/Adam/AdamW; no step increases R(θ) to first order.
* :func:`norm_constrained_backward`: the norm as one more auxiliary row/column of the Gram
  (composes with any :class:`~taskgrad.methods.Weighting`, e.g. ``PrimaryAux``).
"""

from .gram import augment_gram, norm_constrained_backward
from .optim import CoefficientFreeDecay
from .projection import aux_gradient, coefficient_free_direction, decay_coefficient, norm_value

__all__ = [
    "CoefficientFreeDecay",
    "augment_gram",
    "aux_gradient",
    "coefficient_free_direction",
    "decay_coefficient",
    "norm_constrained_backward",
    "norm_value",
]
