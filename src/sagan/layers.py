"""Building blocks of the SAGAN generator and discriminator (BigGAN-style residual blocks).

Spectral norm is not applied here: the networks apply it to every conv, linear and embedding
once they are built and initialised (`sagan.spectral.apply_spectral_norm`), so that the
orthogonal initialisation is what gets normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def embed_classes(table: nn.Embedding, y: torch.Tensor) -> torch.Tensor:
    """Rows of an embedding for class indices y (B,), or their weighted sum for class weights y (B, K).

    Weights let a generator move between classes (interpolation): a one-hot row gives exactly
    the class's own embedding.
    """
    return table(y) if not y.is_floating_point() else y.to(table.weight.dtype) @ table.weight


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose per-channel gain and bias depend on the class (de Vries et al. 2017).

        y = (x - mean) / std * (1 + gain(c)) + bias(c)

    Two forms:
      - num_classes > 0 (SAGAN's): gain and bias are class embeddings, c is the class index (B,)
        or class weights (B, num_classes) (see `embed_classes`).
      - condition_dim > 0 (BigGAN's): gain and bias are linear maps of a conditioning vector c
        of shape (B, condition_dim), e.g. a shared class embedding, optionally with a chunk of z.
    The gain is 1 + ... so a fresh layer starts close to plain batch norm.

    Class embeddings carry a learnable scale s (stored as log s, starting at s = 1). Spectral
    norm sets the embedding matrix's largest singular value to exactly 1, which fixes how strongly
    the class can act: rows of norm about 1, per-channel gains of about 1/sqrt(C), too weak for
    classes to differ. With s learnt, SN keeps the table well-conditioned while training picks the
    strength, as BigGAN's free shared embedding does (docs/tuning.md has the trials).

    Shape:
        - x: (B, C, H, W); condition: (B,) class indices or (B, condition_dim).
        - Output: (B, C, H, W).
    """

    def __init__(self, num_features: int, num_classes: int = 0, condition_dim: int = 0, momentum: float = 0.1) -> None:
        super().__init__()
        if (num_classes > 0) == (condition_dim > 0):
            raise ValueError("ConditionalBatchNorm2d takes exactly one of num_classes > 0 or condition_dim > 0")
        self.bn = nn.BatchNorm2d(num_features, affine=False, momentum=momentum)
        self.log_scale = None
        if num_classes:
            self.gain, self.bias = nn.Embedding(num_classes, num_features), nn.Embedding(num_classes, num_features)
            self.log_scale = nn.Parameter(torch.zeros(()))
        else:
            self.gain = nn.Linear(condition_dim, num_features, bias=False)
            self.bias = nn.Linear(condition_dim, num_features, bias=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if self.log_scale is not None:
            gain, bias = embed_classes(self.gain, condition), embed_classes(self.bias, condition)
        else:
            gain, bias = self.gain(condition), self.bias(condition)
        gain, bias = gain[:, :, None, None], bias[:, :, None, None]
        if self.log_scale is not None:
            scale = self.log_scale.exp()
            gain, bias = gain * scale, bias * scale
        gain = 1 + gain
        return self.bn(x) * gain + bias


class _Norm(nn.Module):
    """Plain BN when unconditional, conditional BN otherwise; one call signature for both."""

    def __init__(self, num_features: int, num_classes: int, condition_dim: int) -> None:
        super().__init__()
        if num_classes or condition_dim:
            self.norm: nn.Module = ConditionalBatchNorm2d(num_features, num_classes, condition_dim)
        else:
            self.norm = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x, condition) if isinstance(self.norm, ConditionalBatchNorm2d) else self.norm(x)


class UpBlock(nn.Module):
    """Generator residual block that doubles the resolution.

        main:     BN -> ReLU -> 2x nearest upsample -> 3x3 conv -> BN -> ReLU -> 3x3 conv
        shortcut: 1x1 conv -> 2x nearest upsample

    (A 1x1 conv commutes with nearest upsampling, so running it first is the same map at a quarter
    of the cost.) BNs are conditional when num_classes or condition_dim is > 0
    (see :class:`ConditionalBatchNorm2d`).

    Shape: (B, in_channels, H, W) -> (B, out_channels, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0, condition_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = _Norm(in_channels, num_classes, condition_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _Norm(out_channels, num_classes, condition_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.norm1(x, condition))
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.norm2(h, condition)))
        return h + F.interpolate(self.shortcut(x), scale_factor=2, mode="nearest")


class DownBlock(nn.Module):
    """Discriminator residual block.

        main:     [ReLU] -> 3x3 conv -> ReLU -> 3x3 conv -> [2x2 average pool]
        shortcut: [2x2 average pool] -> 1x1 conv   (identity when nothing changes)

    The first block of D has no leading ReLU (it sees the image). Pooling before the 1x1 conv is the
    same map as after it (both linear) at a quarter of the cost.

    Shape: (B, in_channels, H, W) -> (B, out_channels, H/2, W/2), or H, W without downsampling.
    """

    def __init__(
        self, in_channels: int, out_channels: int, downsample: bool = True, preactivation: bool = True
    ) -> None:
        super().__init__()
        self.preactivation = preactivation
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        learnable = downsample or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        return h + (self.shortcut(x) if self.shortcut is not None else x)
