"""taskgrad: multi-task and primary/auxiliary learning as exact functions of the Gram matrix.

With task gradients g_1..g_k (rows of J) and G = J Jᵀ, a method picks weights w = f(G) and the
update is d = Jᵀw, which costs one backward of Σ wᵢLᵢ.

The core (solvers, methods, sources, training) is imported with the package; the other
subpackages (``taskgrad.linear``, ``taskgrad.second_order``, ``taskgrad.regularize``,
``taskgrad.noisy``, ``taskgrad.distributed``, ``taskgrad.tracking``, ``taskgrad.datasets``,
``taskgrad.models``, ``taskgrad.bench``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import methods, solvers, sources, training
from ._warmup import compile_kernels
from .methods import Weighting

# the methods from their own modules: taskgrad.methods exports them at import time (through the
# registry), which type checkers cannot follow
from .methods.auxiliary.primary_aux import PrimaryAux
from .methods.gram.mgda import MGDA
from .methods.loss.mean import Mean
from .training import BackwardResult, backward

__version__ = "0.1.0"

_LAZY = {
    "bench",
    "datasets",
    "distributed",
    "lightning",
    "linear",
    "models",
    "noisy",
    "regularize",
    "second_order",
    "tracking",
}
_DEPRECATED = {"logging"}  # taskgrad.logging: the old name of taskgrad.tracking (warns on import)


def __getattr__(name: str) -> Any:
    """Import the optional subpackages on first attribute access (``taskgrad.linear`` …)."""
    if name in _LAZY or name in _DEPRECATED:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'taskgrad' has no attribute {name!r}")


__all__ = [
    "MGDA",
    "BackwardResult",
    "Mean",
    "PrimaryAux",
    "Weighting",
    "backward",
    "compile_kernels",
    "methods",
    "solvers",
    "sources",
    "training",
    *sorted(_LAZY),
]
