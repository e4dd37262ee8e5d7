"""numba's ``njit`` when numba imports, else a no-op decorator (the kernels then run as Python).

numba is a runtime dependency; the fallback keeps ``import taskgrad`` working where it cannot
be installed, and callers check :data:`HAVE_NUMBA` to choose a faster pure-torch/NumPy path.
"""

from __future__ import annotations

from typing import Any

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

    def njit(*args: Any, **kwargs: Any) -> Any:
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


__all__ = ["HAVE_NUMBA", "njit"]
