"""PCGrad: project conflicting gradients off each other in random order.

Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    flat_gram,
    generator_state,
    own_generator,
    set_generator_state,
)
from .._impl import Impl
from ..base import Weighting
from ..registry import register_method

__all__ = ["PCGrad"]


@register_method(
    "pcgrad",
    description="PCGrad: project conflicting gradients off each other in random order.",
    paper="Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020",
    aliases=("PCGrad",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class PCGrad(Weighting):
    """PCGrad (Yu et al., 2020, Algorithm 1) as weights on the original gradients.

    For each task i: gᵢᴾᶜ ← gᵢ; for j ≠ i in a random order, if ⟨gᵢᴾᶜ, gⱼ⟩ < 0 then
    gᵢᴾᶜ ← gᵢᴾᶜ − ⟨gᵢᴾᶜ, gⱼ⟩/‖gⱼ‖² · gⱼ. The update is d = Σᵢ gᵢᴾᶜ. Writing gᵢᴾᶜ = Σⱼ Cᵢⱼgⱼ,
    every inner product is a row of C G, so w = 1ᵀC from the Gram matrix alone.

    The order for task i is ``torch.randperm(k, generator=generator)`` (drawn task by task),
    so a run is reproducible from the generator's seed; ``generator=None`` uses torch's
    global RNG. The generator's state is part of :meth:`state_dict`.

    ``impl`` (see the module doc): the orders are drawn the same way on every path, so a seeded
    run gives the same weights (to rounding) with ``"numba"`` and ``"torch"``. On a GPU,
    ``"numba"`` copies the k×k Gram matrix to the host (one synchronization) and the weights back.
    """

    def __init__(self, generator: torch.Generator | None = None, impl: Impl = "auto") -> None:
        self.generator = own_generator(generator)
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor) -> Tensor:
        if _impl.use_host(self.impl, gram):
            Gn = _impl.host_gram(gram)
            B, k = Gn.shape[0], Gn.shape[-1]
            perms = _impl.draw_permutations(B, k, k, self.generator, torch.device("cpu"))
            return _impl.from_host(
                _impl.kernel("pcgrad").pcgrad(Gn, perms.numpy()), gram.shape[:-1], gram
            )
        Gb, batch = flat_gram(gram)
        B, k = Gb.shape[0], Gb.shape[-1]
        perms = _impl.draw_permutations(B, k, k, self.generator, Gb.device)
        C = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B, k, k).clone()
        diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
        rows = torch.arange(k, device=Gb.device)
        for p in range(k):
            j = perms[:, :, p]  # (B, k): the task that row i visits at position p
            Gj = Gb.gather(1, j.unsqueeze(-1).expand(B, k, k))  # Gj[b, i] = G[b, j[b, i]]
            inner = (C * Gj).sum(-1)  # ⟨gᵢᴾᶜ, gⱼ⟩
            gjj = diag.gather(-1, j)
            apply = (j != rows) & (inner < 0) & (gjj > 0)
            delta = torch.where(
                apply,
                -inner / torch.where(apply, gjj, torch.ones_like(gjj)),
                torch.zeros_like(inner),
            )
            C.scatter_add_(-1, j.unsqueeze(-1), delta.unsqueeze(-1))
        return C.sum(-2).to(gram.dtype).reshape(*batch, k)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))
