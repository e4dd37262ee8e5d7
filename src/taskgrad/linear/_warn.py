"""Warnings that point at the user's line: the first caller outside ``taskgrad.linear``."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _internal(filename: str) -> bool:
    """This package, or joblib's frames between a CV estimator and its fold fits."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE) or f"{os.sep}joblib{os.sep}" in path


def warn_at_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the stacklevel of the first frame outside this package (and joblib),
    so the warning names the user's call (``est.fit(X, y)``) however deep the solver ran.
    """
    frame: FrameType | None = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
