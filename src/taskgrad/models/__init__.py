"""Reference models used by the examples and benchmarks, and the multi-task architectures
LibMTL users bring (hard parameter sharing, cross-stitch, MTAN, MMoE, CGC/PLE, DSelect-k), each
returning a :class:`MultiTaskOutput` whose ``features`` feed the representation source."""

from .architectures import CGC, MMoE, MTAN, PLE, CrossStitch, DSelectK, HardParameterSharing, MultiTaskOutput, mlp
from .resnet import BasicBlock, MultiHead, ResNetEncoder, resnet18_encoder

__all__ = [
    "CGC",
    "MMoE",
    "MTAN",
    "PLE",
    "BasicBlock",
    "CrossStitch",
    "DSelectK",
    "HardParameterSharing",
    "MultiHead",
    "MultiTaskOutput",
    "ResNetEncoder",
    "mlp",
    "resnet18_encoder",
]
