"""Reference models used by the examples and benchmarks, and the multi-task architectures
LibMTL users bring (hard parameter sharing, cross-stitch, MTAN, MMoE, CGC/PLE, DSelect-k), each
returning a :class:`MultiTaskOutput` whose ``features`` feed the representation source."""

from .architectures import (
    CGC,
    MMoE,
    MTAN,
    PLE,
    TABULAR_ARCHITECTURES,
    CrossStitch,
    DSelectK,
    FeaturesAndOutputs,
    HardParameterSharing,
    MultiTaskOutput,
    mlp,
    tabular_multitask,
)
from .resnet import BasicBlock, MultiHead, ResNetEncoder, resnet18_encoder

__all__ = [
    "CGC",
    "MMoE",
    "MTAN",
    "PLE",
    "BasicBlock",
    "CrossStitch",
    "DSelectK",
    "FeaturesAndOutputs",
    "HardParameterSharing",
    "MultiHead",
    "MultiTaskOutput",
    "ResNetEncoder",
    "TABULAR_ARCHITECTURES",
    "mlp",
    "resnet18_encoder",
    "tabular_multitask",
]
