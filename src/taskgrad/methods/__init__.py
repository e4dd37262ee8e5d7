"""Methods: turn a Gram matrix and/or task losses into task weights (see :class:`Weighting`).

``taskgrad.methods.get("cagrad", c=0.4)`` builds a method by name; ``available()`` lists them,
``infos()`` gives each one's declared properties and ``describe(name)`` its parameters.

Layout: one module per method in ``gram/`` (Gram-based aggregators), ``loss/`` (loss
weightings), ``auxiliary/`` (primary/auxiliary methods) and ``jacobian/`` (methods that need the
Jacobian itself). Each registers itself with :func:`register_method`; this package imports every
public module of those folders, so a new file is all a new method needs. The classes are
re-exported here (``taskgrad.methods.CAGrad``).
"""

from __future__ import annotations

import importlib
import pkgutil

from . import registry
from .base import Weighting, check_losses
from .errors import MethodConvergenceError, UndefinedMethodError
from .registry import MethodInfo, available, describe, get, infos, register, register_method

_FAMILIES = ("gram", "loss", "auxiliary", "jacobian")


def _import_all() -> list[str]:
    """Import every public module of the method folders; return the names they export."""
    exported: list[str] = []
    for fam in _FAMILIES:
        pkg = importlib.import_module(f"{__name__}.{fam}")
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):
                continue
            module = importlib.import_module(f"{pkg.__name__}.{mod.name}")
            for name in getattr(module, "__all__", ()):
                if name in globals() and globals()[name] is not getattr(module, name):
                    raise ImportError(
                        f"taskgrad.methods.{name} is defined twice ({module.__name__})."
                    )
                globals()[name] = getattr(module, name)
                exported.append(name)
    return exported


_EXPORTED = _import_all()

__all__ = [
    "MethodConvergenceError",
    "MethodInfo",
    "UndefinedMethodError",
    "Weighting",
    "available",
    "check_losses",
    "describe",
    "get",
    "infos",
    "register",
    "register_method",
    "registry",
]
__all__ += sorted(set(_EXPORTED) - set(__all__))
