"""Gradient Vaccine: steer pairwise cosines to an EMA target.

Wang et al., Gradient Vaccine, ICLR 2021.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _impl
from .._common import (
    clone_state,
    diag_norms,
    flat_gram,
    generator_state,
    own_generator,
    set_generator_state,
    work_dtype,
)
from .._impl import Impl
from .._validate import check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["GradVac"]


@register_method(
    "gradvac",
    description="Gradient Vaccine: steer pairwise cosines to an EMA target.",
    paper="Wang et al., Gradient Vaccine, ICLR 2021",
    aliases=("GradVac",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class GradVac(Weighting):
    """Gradient Vaccine (Wang et al., 2021) in Gram form, with its EMA of target similarities.

    For each task i and each j ≠ i in a random order: φᵢⱼ = ⟨gᵢᴾᶜ, gⱼ⟩/(‖gᵢᴾᶜ‖‖gⱼ‖ + ε);
    if φᵢⱼ < φ̂ᵢⱼ, gᵢᴾᶜ += ‖gᵢᴾᶜ‖(φ̂ᵢⱼ√(1−φᵢⱼ²) − φᵢⱼ√(1−φ̂ᵢⱼ²))/(‖gⱼ‖√(1−φ̂ᵢⱼ²) + ε) · gⱼ;
    then φ̂ᵢⱼ ← (1−β)φ̂ᵢⱼ + βφᵢⱼ. The update is d = Σᵢ gᵢᴾᶜ (φ̂ starts at 0).

    State: φ̂ of shape (..., k, k), advanced once per call; plus the generator's state.
    Orders come from ``torch.randperm(k − 1, generator=generator)`` for each task in turn, on
    every ``impl`` (see the module doc; ``"numba"`` on a GPU copies G and φ̂ to the host and back).

    This is the whole-model granularity. LibMTL's per-layer and per-matrix ones need one Gram per
    parameter block, which the whole-model Gram does not determine:
    ``Blockwise(GradVac(), parameter_blocks(params, "layer", module))`` runs it on the Jacobian
    (one φ̂ per block, see :class:`~taskgrad.methods.Blockwise`).
    """

    def __init__(
        self,
        beta: float = 0.5,
        eps: float = 1e-8,
        generator: torch.Generator | None = None,
        impl: Impl = "auto",
    ) -> None:
        self.beta = check_real("GradVac", "beta", beta, low=0.0, high=1.0)
        self.eps = check_real("GradVac", "eps", eps, low=0.0)
        self.generator = own_generator(generator)
        self.impl = _impl.check_impl(impl)
        self._phi: Tensor | None = None

    def compute(self, *, gram: Tensor) -> Tensor:
        batch, k = gram.shape[:-2], gram.shape[-1]
        B = batch.numel()
        dtype = work_dtype(gram)
        if self._phi is None or self._phi.shape != (*batch, k, k):
            if self._phi is not None:
                raise ValueError(
                    f"GradVac's state is for Gram matrices of shape {tuple(self._phi.shape)}, got "
                    f"{tuple(gram.shape)}; call reset() before changing the number of tasks."
                )
            self._phi = torch.zeros(*batch, k, k, dtype=dtype, device=gram.device)
        if _impl.use_host(self.impl, gram):
            ph_host = np.array(
                self._phi.detach().reshape(B, k, k).to("cpu", torch.float64).numpy()
            )  # a copy
            w_host = np.ones((B, k))
            if k > 1:
                perms = _impl.draw_permutations(B, k, k - 1, self.generator, torch.device("cpu"))
                w_host = _impl.kernel("gradvac").gradvac(
                    _impl.host_gram(gram), perms.numpy(), ph_host, float(self.beta), float(self.eps)
                )
            self._phi = _impl.from_host(ph_host, (*batch, k, k), gram, dtype)
            return _impl.from_host(w_host, (*batch, k), gram)
        Gb, _ = flat_gram(gram)
        phi_hat = self._phi.to(Gb.dtype).reshape(B, k, k).clone()
        C = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B, k, k).clone()
        if k > 1:
            perms = _impl.draw_permutations(B, k, k - 1, self.generator, Gb.device)
            rows = torch.arange(k, device=Gb.device)
            # others[i] = [j for j in range(k) if j != i]; visit others[i][perm]
            others = torch.arange(k - 1, device=Gb.device).expand(k, k - 1)
            others = others + (others >= rows.unsqueeze(-1)).long()
            order = others.expand(B, k, k - 1).gather(-1, perms)
            cG = C @ Gb  # row i: ⟨gᵢᴾᶜ, gⱼ⟩ for all j
            norm_j_all = diag_norms(Gb)
            for p in range(k - 1):
                j = order[:, :, p]
                dot = cG.gather(-1, j.unsqueeze(-1)).squeeze(-1)
                norm_i = (cG * C).sum(-1).clamp_min(0.0).sqrt()
                norm_j = norm_j_all.gather(-1, j)
                phi = dot / (norm_i * norm_j + self.eps)
                ph = phi_hat.gather(-1, j.unsqueeze(-1)).squeeze(-1)
                fix = phi < ph
                s_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
                s_hat = (1.0 - ph * ph).clamp_min(0.0).sqrt()
                w = norm_i * (ph * s_phi - phi * s_hat) / (norm_j * s_hat + self.eps)
                w = torch.where(fix, w, torch.zeros_like(w))
                C.scatter_add_(-1, j.unsqueeze(-1), w.unsqueeze(-1))
                Gj = Gb.gather(1, j.unsqueeze(-1).expand(B, k, k))
                cG = cG + w.unsqueeze(-1) * Gj
                phi_hat.scatter_(
                    -1, j.unsqueeze(-1), ((1.0 - self.beta) * ph + self.beta * phi).unsqueeze(-1)
                )
        self._phi = phi_hat.reshape(*batch, k, k)
        return C.sum(-2).to(gram.dtype).reshape(*batch, k)

    def reset(self) -> None:
        self._phi = None

    def state_dict(self) -> dict[str, Any]:
        return {"phi_hat": clone_state(self._phi), "generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._phi = clone_state(state_dict.get("phi_hat"))
        set_generator_state(self.generator, state_dict.get("generator"))
