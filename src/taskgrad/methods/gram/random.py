"""Random gradient weighting: softmax of Gaussian draws.

Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022 (RGW).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    generator_state,
    own_generator,
    set_generator_state,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["RandomGradient"]


@register_method(
    "random",
    description="Random gradient weighting: softmax of Gaussian draws.",
    paper="Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022 (RGW)",
    aliases=("RandomGradient", "RGW"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class RandomGradient(Weighting):
    """Random gradient weighting (Lin et al., 2022, Algorithm 2): d = Σ λᵢgᵢ with
    λ = softmax(z), z ~ N(0, I) drawn afresh each call from ``generator`` (or torch's global RNG).

    Declares the Gram matrix only to be a gradient aggregator (it does not read it); the
    loss-based twin is :class:`~taskgrad.methods.RLW`.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = own_generator(generator)

    def compute(self, *, gram: Tensor) -> Tensor:
        return _impl.random_softmax_weights(tuple(gram.shape[:-1]), gram, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))
