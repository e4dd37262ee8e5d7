"""GradDrop (Chen et al., NeurIPS 2020): keep, per coordinate, the gradients of one random sign."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._common import check_generator, generator_state, set_generator_state
from ..gram._zoo_checks import check_vector, task_vector
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["GradDrop"]


def _identity(p: Tensor) -> Tensor:
    return p


@register_method(
    "graddrop",
    description="GradDrop: per coordinate, keep the gradients of one randomly chosen sign.",
    paper=(
        "Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign "
        "Dropout, NeurIPS 2020"
    ),
    aliases=("GradDrop",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class GradDrop(JacobianAggregator):
    """Gradient sign dropout (Chen et al., "Just pick a sign", NeurIPS 2020, Algorithm 1 lines
    10-15; TorchJD's GradDrop). Per coordinate, the positive-sign purity
    P = ½(1 + Σᵢ Jᵢ / Σᵢ |Jᵢ|) and one uniform draw U choose a sign: positive entries are kept
    where f(P) > U, negative ones where f(P) < U; d = Σᵢ (ℓᵢ + (1 − ℓᵢ) Mᵢ) ⊙ gᵢ with the leak
    ℓ (default 0). ``f`` is increasing (default identity). Draws from ``generator`` (torch's
    global RNG when None: then the same seed gives TorchJD's draws). Needs the Jacobian.
    """

    def __init__(
        self,
        f: Callable[[Tensor], Tensor] = _identity,
        leak: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not callable(f):
            raise TypeError(
                f"f must be a callable mapping the purity tensor to a tensor, got {f!r}."
            )
        self.f = f
        self.leak = check_vector("leak", leak)
        if self.leak is not None and bool(((self.leak < 0) | (self.leak > 1)).any()):
            raise ValueError(f"leak must be in [0, 1] entrywise, got {self.leak.tolist()}.")
        self.generator = check_generator(generator)

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        J = jacobian
        k = J.shape[0]
        leak = task_vector("leak", self.leak, k, 0.0, J)
        # a coordinate where every gradient is 0 gives 0/0; its entries are 0 whatever the mask
        purity = 0.5 * (1.0 + J.sum(0) / J.abs().sum(0))
        fp = self.f(purity)
        dev = self.generator.device if self.generator is not None else J.device
        u = torch.rand(purity.shape, dtype=J.dtype, device=dev, generator=self.generator).to(
            J.device
        )
        keep = ((fp > u) & (J > 0)) | ((fp < u) & (J < 0))
        return ((leak[:, None] + (1.0 - leak[:, None]) * keep) * J).sum(0)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))
