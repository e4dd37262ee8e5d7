"""Jacobian aggregators: one module per method (needs the Jacobian itself), each registering itself."""

from ._backward import backward_jacobian, shared_jacobian

__all__ = ["backward_jacobian", "shared_jacobian"]
