"""taskgrad.tracking is the package; taskgrad.logging is a deprecated alias that warns and
forwards.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import taskgrad
from taskgrad import tracking


def _forget_alias() -> None:
    for name in [
        m for m in sys.modules if m == "taskgrad.logging" or m.startswith("taskgrad.logging.")
    ]:
        del sys.modules[name]
    taskgrad.__dict__.pop("logging", None)


def test_old_name_warns_and_forwards_every_name():
    _forget_alias()
    with pytest.warns(DeprecationWarning, match="taskgrad.tracking"):
        old = importlib.import_module("taskgrad.logging")
    assert set(old.__all__) == set(tracking.__all__)
    for name in tracking.__all__:
        assert getattr(old, name) is getattr(tracking, name)
    import taskgrad.logging.loggers as old_loggers

    assert old_loggers is tracking.loggers
    assert old_loggers.CSVLogger is tracking.CSVLogger


def test_from_taskgrad_import_logging_warns():
    _forget_alias()
    with pytest.warns(DeprecationWarning):
        from taskgrad import logging as old
    assert old.CSVLogger is tracking.CSVLogger


@pytest.mark.slow
def test_new_name_does_not_shadow_or_warn():
    code = (
        "import warnings; warnings.simplefilter('error'); import logging, taskgrad; "
        "from taskgrad import tracking; assert tracking.CSVLogger; "
        "assert logging.getLogger is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
