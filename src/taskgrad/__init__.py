"""taskgrad: multi-task and primary/auxiliary learning as exact functions of the Gram matrix.

With task gradients g_1..g_k (rows of J) and G = J Jᵀ, a method picks weights w = f(G) and the
update is d = Jᵀw, which costs one backward of Σ wᵢLᵢ.
"""

from . import methods, solvers, sources
from .methods import MGDA, Mean, PrimaryAux, Weighting
from .training import BackwardResult, backward

__version__ = "0.1.0"

__all__ = [
    "MGDA",
    "BackwardResult",
    "Mean",
    "PrimaryAux",
    "Weighting",
    "backward",
    "methods",
    "solvers",
    "sources",
]
