"""OL-AUX-style online auxiliary weights from <g0, g_i>.

Lin et al., Adaptive Auxiliary Task Weighting for Reinforcement Learning, NeurIPS 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    clone_state,
)
from .._validate import check_bool, check_int, check_real
from ..base import Weighting
from ..registry import register_method
from ._cosines import _cosines

__all__ = ["OLAux"]


@register_method(
    "ol-aux",
    description="OL-AUX-style online auxiliary weights from <g0, g_i>.",
    paper="Lin et al., Adaptive Auxiliary Task Weighting for Reinforcement Learning, NeurIPS 2019",
    aliases=("OLAux",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class OLAux(Weighting):
    """OL-AUX-style online auxiliary weights (Lin et al., 2019), from ⟨g₀, gᵢ⟩.

    One step of the primary loss after an update with weights w changes it to first order by
    −η Σᵢ wᵢ⟨g₀, gᵢ⟩, so its gradient in wᵢ is −η⟨g₀, gᵢ⟩. The auxiliary weights (init
    ``init``) take a gradient step with learning rate ``lr`` (η folded in) on the sum of these
    inner products over the last ``horizon`` calls: wᵢ ← wᵢ + lr·Σₜ⟨g₀, gᵢ⟩ₜ (cosines instead
    with ``normalize=True``), clamped at ≥ 0 when ``nonnegative``. The primary weight is 1.
    State: the weights, the running sum and the call count.
    """

    # state, set by reset()
    _w: Tensor | None
    _acc: Tensor | None
    _n: int

    def __init__(
        self,
        lr: float = 0.1,
        horizon: int = 1,
        init: float = 1.0,
        normalize: bool = False,
        nonnegative: bool = True,
    ) -> None:
        self.lr = check_real("OLAux", "lr", lr, low=0.0)
        self.horizon = check_int("OLAux", "horizon", horizon, low=1)
        self.init = check_real("OLAux", "init", init)
        self.normalize = check_bool("OLAux", "normalize", normalize)
        self.nonnegative = check_bool("OLAux", "nonnegative", nonnegative)
        self.reset()

    def compute(self, *, gram: Tensor) -> Tensor:
        shape = gram.shape[:-1]
        if self._w is None:
            self._w = torch.full(shape, float(self.init), dtype=gram.dtype, device=gram.device)
            self._w[..., 0] = 1.0
            self._acc = torch.zeros_like(self._w)
        elif self._w.shape != shape:
            raise ValueError(
                f"OLAux's state is for {tuple(self._w.shape)} weights, got a Gram for "
                f"{tuple(shape)}; call reset()."
            )
        w = self._w.to(gram.dtype).clone()
        signal = _cosines(gram, 1e-12)[0] if self.normalize else gram[..., 0, :]
        assert self._acc is not None
        self._acc = self._acc + signal.to(self._acc.dtype)
        self._n += 1
        if self._n % self.horizon == 0:
            new = self._w + self.lr * self._acc
            if self.nonnegative:
                new = new.clamp_min(0.0)
            new[..., 0] = 1.0
            self._w = new
            self._acc = torch.zeros_like(self._acc)
        return w

    def reset(self) -> None:
        self._w = None
        self._acc = None
        self._n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"w": clone_state(self._w), "acc": clone_state(self._acc), "n": self._n}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w = clone_state(state_dict["w"])
        self._acc = clone_state(state_dict["acc"])
        self._n = int(state_dict["n"])
