"""The built-in tasks' models: a plain MLP and a small conv net.

Both are `nn.Sequential`-based so FX quantization, torch-pruning and the checkpoint rebuild
(resize each Linear/Conv to the saved shapes) work on them without edits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> ReLU stacks. x: (B, in_features) -> logits (B, num_classes)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class ConvNet(nn.Module):
    """Conv(3x3) -> BN -> ReLU blocks, max-pool after each, then an MLP head.

    x: (B, C, H, W) -> logits (B, num_classes). For 1x8x8 digits, two blocks give (B, c2, 2, 2).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        hidden: int,
        num_classes: int,
        *,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        size = image_size
        for c in channels:
            blocks += [
                nn.Conv2d(c_in, c, kernel_size=3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c
            size //= 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * size * size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]
