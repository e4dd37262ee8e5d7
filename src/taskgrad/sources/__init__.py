"""Gradient sources: produce the k×k Gram matrix of the task gradients from the losses."""

from ._graph import shared_parameters
from .gram import parameter_gram, representation_gram

__all__ = ["parameter_gram", "representation_gram", "shared_parameters"]
