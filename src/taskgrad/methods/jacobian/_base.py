"""The Jacobian-aggregator contract: J (k, P) -> direction d (P,).

Most methods are functions of the Gram matrix G = J Jᵀ (k × k) and never need J. A few read J
itself (coordinate-wise signs or order statistics, pseudo-inverses, per-coordinate statistics);
they declare ``needs = {"jacobian"}`` (optionally plus ``"losses"``) and implement
:meth:`JacobianAggregator.direction`. Memory: J holds k·P numbers (k copies of the shared
gradient, e.g. 4 tasks × 25M parameters × 4 bytes = 400 MB in float32), against k² for a Gram
method; stateful ones (ExcessMTL, MoCo) keep another k·P buffer between steps.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import Tensor

from ...solvers import check_finite, check_float
from ..base import Weighting, check_losses

__all__ = ["JacobianAggregator", "check_jacobian"]


def check_jacobian(J: Tensor) -> int:
    """Validate a (k, P) Jacobian (one row per task gradient) and return k."""
    check_float("jacobian", J)
    if J.dim() != 2:
        raise ValueError(
            f"jacobian must have shape (k, P): one row per task gradient, flattened over the "
            f"parameters, got {tuple(J.shape)}. Flatten each gradient with torch.cat([g.flatten() "
            "...])."
        )
    if J.shape[0] == 0:
        raise ValueError("jacobian has k = 0 rows; at least one task is needed.")
    check_finite("jacobian", J)
    return J.shape[0]


class JacobianAggregator(Weighting):
    """Base class of the methods that need the Jacobian itself: ``d = method.aggregate(J, losses)``.

    They cannot run from the Gram matrix: :func:`taskgrad.backward` materializes J over the
    shared parameters for them (see the module docstring for the memory cost).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"jacobian"})

    @abstractmethod
    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        """The update direction (P,) from the validated (k, P) Jacobian."""

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        raise TypeError(
            f"{type(self).__name__} needs the Jacobian itself, not the Gram matrix: call "
            f"{type(self).__name__.lower()}.aggregate(J) with J of shape (k, P), or train with "
            "taskgrad.backward, which materializes J for it."
        )

    def __call__(self, gram: Tensor | None = None, *, losses: Tensor | None = None) -> Tensor:
        return self.compute(gram=gram, losses=losses)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Direction d (P,) for the Jacobian J (k, P) (and the losses when ``needs`` has them)."""
        k = check_jacobian(jacobian)
        if "losses" in self.needs:
            if losses is None:
                raise ValueError(
                    f"{type(self).__name__} needs the task losses: call aggregate(J, losses=L)."
                )
            check_losses(losses, k)
            if losses.dim() != 1:
                raise ValueError(
                    f"losses must have shape (k,) = ({k},), got {tuple(losses.shape)}."
                )
        d = self.direction(jacobian, losses)
        if d.shape != jacobian.shape[1:]:
            raise RuntimeError(
                f"{type(self).__name__} returned a direction of shape {tuple(d.shape)}."
            )
        return d
