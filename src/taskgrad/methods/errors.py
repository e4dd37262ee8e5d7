"""The errors a method raises when it has no answer for its input, or did not find it."""

from __future__ import annotations

__all__ = ["MethodConvergenceError", "UndefinedMethodError"]


class UndefinedMethodError(ValueError):
    """The method is mathematically undefined for this Gram matrix (e.g. Nash-MTL when 0 lies in
    the convex hull of the task gradients).
    """


class MethodConvergenceError(RuntimeError):
    """The method's iterative solve stopped before it met its convergence test; the problem has
    a solution (raise ``max_iter`` or change the hyper-parameter named in the message).
    """
