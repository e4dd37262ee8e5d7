"""Random Loss Weighting: softmax of Gaussian draws, no Gram needed.

Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022.
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

__all__ = ["RLW"]


@register_method(
    "rlw",
    description="Random Loss Weighting: softmax of Gaussian draws, no Gram needed.",
    paper="Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022",
    aliases=("RLW",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class RLW(Weighting):
    """Random Loss Weighting (Lin et al., 2022, Algorithm 1): w = softmax(z), z ~ N(0, I),
    drawn afresh each call from ``generator`` (torch's global RNG when None).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = own_generator(generator)

    def compute(self, *, losses: Tensor) -> Tensor:
        return _impl.random_softmax_weights(tuple(losses.shape), losses, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))
