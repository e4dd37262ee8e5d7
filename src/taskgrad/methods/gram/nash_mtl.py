"""Nash-MTL: Nash bargaining solution G a = 1/a (exact Newton solve).

Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import _impl
from .._common import clip_combination, clone_state
from .._impl import Impl
from .._validate import check_int, check_real
from ..base import Weighting
from ..registry import register_method
from ._alpha_fair import alpha_fair_weights, fair_weights

__all__ = ["NashMTL", "alpha_fair_weights"]


@register_method(
    "nash-mtl",
    description="Nash-MTL: Nash bargaining solution G a = 1/a (exact Newton solve).",
    paper="Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022",
    aliases=("NashMTL", "Nash_MTL"),
    defined="zero-not-in-hull",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=True,
    random=False,
)
class NashMTL(Weighting):
    """Nash-MTL (Navon et al., 2022): the Nash bargaining solution, solved exactly.

    The bargaining direction maximizes Σ log⟨gᵢ, d⟩ over ‖d‖ ≤ 1; d = Jᵀα with α > 0 solving
    Gα = 1/α (elementwise), the minimizer of the strictly convex ½αᵀGα − Σ log αᵢ. The
    reference solves it with a sequence of convex (CCP) problems in cvxpy; here Newton's method
    (see :func:`alpha_fair_weights`) reaches the same fixed point to machine precision.

    As in the reference (and TorchJD): weights are recomputed every ``update_weights_every``
    calls and reused in between (state: the call count and the last α), and when ``max_norm``
    > 0 the weights are scaled so that ‖Jᵀα‖ ≤ max_norm. Undefined problems (a zero gradient,
    0 in the convex hull) raise :class:`UndefinedMethodError`; a solve that does not converge in
    ``max_iter`` Newton steps raises :class:`MethodConvergenceError`. Solved on the cosine
    matrix, so gradient norms differing by many orders of magnitude are fine.
    """

    def __init__(
        self,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int = 100,
        impl: Impl = "auto",
    ) -> None:
        self.max_norm = check_real("NashMTL", "max_norm (0 disables clipping)", max_norm, low=0.0)
        self.update_weights_every = check_int(
            "NashMTL", "update_weights_every", update_weights_every, low=1
        )
        self.max_iter = check_int("NashMTL", "max_iter", max_iter, low=0)
        self.impl = _impl.check_impl(impl)
        self._step = 0
        self._alpha: Tensor | None = None

    def compute(self, *, gram: Tensor) -> Tensor:
        if self._step % self.update_weights_every == 0 or self._alpha is None:
            self._alpha = fair_weights(gram, 1.0, self.max_iter, self.impl, "Nash-MTL")
        self._step += 1
        alpha = self._alpha.to(gram.dtype)
        if self.max_norm > 0:
            alpha = clip_combination(alpha, gram, self.max_norm)
        return alpha

    def reset(self) -> None:
        self._step = 0
        self._alpha = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "alpha": clone_state(self._alpha)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._step = int(state_dict["step"])
        self._alpha = clone_state(state_dict.get("alpha"))
