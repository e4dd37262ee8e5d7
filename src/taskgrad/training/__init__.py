"""The training integration: one weighted backward per step."""

from .backward import BackwardResult, backward
from .reduce import LocalReducer, Reducer
from .schedule import Periodic, TaskSubsample
from .step import Accumulation, GradStep, StepResult, TaskOptimizer

__all__ = [
    "Accumulation",
    "BackwardResult",
    "GradStep",
    "LocalReducer",
    "Reducer",
    "Periodic",
    "StepResult",
    "TaskOptimizer",
    "TaskSubsample",
    "backward",
]
