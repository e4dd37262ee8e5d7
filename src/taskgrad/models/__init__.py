"""Reference models used by the examples and benchmarks, and the multi-task architectures
LibMTL users bring (hard parameter sharing, cross-stitch, MTAN, MMoE, CGC/PLE, DSelect-k), each
returning a :class:`MultiTaskOutput` whose ``features`` feed the representation source.
"""

from .architectures import (
    CGC,
    MTAN,
    PLE,
    TABULAR_ARCHITECTURES,
    CrossStitch,
    DSelectK,
    FeaturesAndOutputs,
    HardParameterSharing,
    MMoE,
    MultiTaskOutput,
    mlp,
    tabular_multitask,
)
from .resnet import BasicBlock, MultiHead, ResNetEncoder, resnet18_encoder

__all__ = [
    "CGC",
    "MTAN",
    "PLE",
    "TABULAR_ARCHITECTURES",
    "BasicBlock",
    "CrossStitch",
    "DSelectK",
    "FeaturesAndOutputs",
    "HardParameterSharing",
    "MMoE",
    "MultiHead",
    "MultiTaskOutput",
    "ResNetEncoder",
    "mlp",
    "resnet18_encoder",
    "tabular_multitask",
]
