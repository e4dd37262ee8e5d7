"""Gradient sources: produce the k×k Gram matrix of the task gradients from the losses."""

from ._graph import (
    LossSet,
    as_loss_vector,
    check_params,
    check_reach,
    reachable_leaves,
    shared_parameters,
)
from .blockwise import blockwise_gram, for_each_block
from .capture import FeatureCapture, TaskGrads, capture_features, feature_rows, task_gradients
from .gram import parameter_gram, representation_gram
from .objects import (
    FullGram,
    GramSource,
    JacobianGram,
    ModuleLoss,
    Part,
    RepresentationGram,
    SketchGram,
    make_source,
)
from .sketch import module_loss_fn, sketch_gram, sketch_jacobian

__all__ = [
    "FeatureCapture",
    "LossSet",
    "as_loss_vector",
    "reachable_leaves",
    "Part",
    "TaskGrads",
    "check_params",
    "capture_features",
    "check_reach",
    "feature_rows",
    "for_each_block",
    "task_gradients",
    "FullGram",
    "GramSource",
    "JacobianGram",
    "ModuleLoss",
    "RepresentationGram",
    "SketchGram",
    "blockwise_gram",
    "make_source",
    "module_loss_fn",
    "parameter_gram",
    "representation_gram",
    "shared_parameters",
    "sketch_gram",
    "sketch_jacobian",
]
