"""A ResNet-18-style encoder for 32×32 inputs and a multi-head wrapper (no torchvision).

The encoder follows He et al. (2016) in its CIFAR form: a 3×3 stem without max-pooling, four
stages of two basic blocks with widths (w, 2w, 4w, 8w) and strides (1, 2, 2, 2), then global
average pooling to a flat feature vector of size 8w.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "MultiHead", "ResNetEncoder", "resnet18_encoder"]


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(min(32, c), c)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}.")


class BasicBlock(nn.Module):
    """y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), the two-layer residual block."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, norm: Callable[[int], nn.Module]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """ResNet encoder: (B, C, H, W) images -> (B, feature_dim) features, feature_dim = 8·width."""

    def __init__(
        self,
        width: int = 64,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        in_channels: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}.")
        norm_fn = _norm_layer(norm)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            norm_fn(width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        c_in = width
        for stage, n_blocks in enumerate(blocks):
            c_out = width * 2**stage
            for b in range(n_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride, norm_fn))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.feature_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}.")
        h = self.layers(self.stem(x))
        return h.mean(dim=(2, 3))


def resnet18_encoder(width: int = 64, in_channels: int = 3, norm: str = "batch") -> ResNetEncoder:
    """ResNet-18-style encoder for 32×32 inputs; outputs a flat (B, 8·width) feature vector.

    ``norm``: "batch" (default, as in ResNet-18), "group" (batch-size independent, friendlier to
    per-sample gradient tools), or "none".
    """
    return ResNetEncoder(width=width, blocks=(2, 2, 2, 2), in_channels=in_channels, norm=norm)


class MultiHead(nn.Module):
    """Shared encoder z = f(x) and k linear heads: forward returns (z, [h_1(z), …, h_k(z)]).

    Returning z lets the representation source compute G from ∂Lᵢ/∂z
    (``taskgrad.backward(losses, features=z)``).
    """

    def __init__(
        self, encoder: nn.Module, feature_dim: int, n_tasks: int, out_dim: int = 1
    ) -> None:
        super().__init__()
        if n_tasks < 1 or feature_dim < 1 or out_dim < 1:
            raise ValueError(
                f"feature_dim, n_tasks and out_dim must be positive, got {feature_dim}, {n_tasks}, "
                f"{out_dim}."
            )
        self.encoder = encoder
        self.heads = nn.ModuleList(nn.Linear(feature_dim, out_dim) for _ in range(n_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.encoder(x)
        return z, [head(z) for head in self.heads]
