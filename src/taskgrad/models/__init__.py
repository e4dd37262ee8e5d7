"""Reference models used by the examples and benchmarks."""

from .resnet import BasicBlock, MultiHead, ResNetEncoder, resnet18_encoder

__all__ = ["BasicBlock", "MultiHead", "ResNetEncoder", "resnet18_encoder"]
