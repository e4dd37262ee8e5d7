"""The training integration: one weighted backward per step."""

from .backward import BackwardResult, backward
from .schedule import Periodic, TaskSubsample
from .step import GradStep, StepResult, TaskOptimizer

__all__ = ["BackwardResult", "GradStep", "Periodic", "StepResult", "TaskOptimizer", "TaskSubsample", "backward"]
