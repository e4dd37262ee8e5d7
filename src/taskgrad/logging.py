"""Deprecated alias of :mod:`taskgrad.tracking` (the old name shadowed the standard library's
``logging`` for ``from taskgrad import logging``).

Importing it warns (DeprecationWarning) and forwards every name, and the submodules
``taskgrad.logging.loggers``, ``.plots`` and ``.stats``, to :mod:`taskgrad.tracking`.
"""

from __future__ import annotations

import sys
import warnings

from . import tracking as _tracking
from .tracking import *  # noqa: F403  (the alias forwards every public name)
from .tracking import __all__, loggers, plots, stats  # noqa: F401

warnings.warn(
    "taskgrad.logging is deprecated and will be removed: import taskgrad.tracking instead "
    "(the old name shadowed the standard library's logging).",
    DeprecationWarning,
    stacklevel=2,
)

for _name in ("loggers", "plots", "stats"):
    sys.modules[f"{__name__}.{_name}"] = getattr(_tracking, _name)
__path__: list[
    str
] = []  # a package for the import system, so `import taskgrad.logging.loggers` works
