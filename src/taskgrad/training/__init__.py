"""The thin training integration: one weighted backward per step."""

from .backward import BackwardResult, backward

__all__ = ["BackwardResult", "backward"]
