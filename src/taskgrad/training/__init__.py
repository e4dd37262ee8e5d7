"""The training integration: one weighted backward per step."""

from .backward import BackwardResult, backward
from .schedule import Periodic, TaskSubsample
from .reduce import LocalReducer, Reducer
from .step import Accumulation, GradStep, StepResult, TaskOptimizer

__all__ = ["Accumulation", "BackwardResult", "GradStep", "LocalReducer", "Reducer", "Periodic", "StepResult", "TaskOptimizer", "TaskSubsample", "backward"]
