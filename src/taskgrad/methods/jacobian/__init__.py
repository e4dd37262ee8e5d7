"""Jacobian aggregators: one module per method (needs the Jacobian itself), each registering
itself.
"""

from ._backward import backward_jacobian, shared_jacobian
from ._base import JacobianAggregator, check_jacobian

__all__ = ["JacobianAggregator", "backward_jacobian", "check_jacobian", "shared_jacobian"]
