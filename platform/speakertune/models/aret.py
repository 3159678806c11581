"""Aggregated-residual TDNN: ResNeXt-style blocks (Xie et al. 2017) on dilated TDNN layers.

Each block is 1x1 reduce -> grouped (cardinality-way) dilated conv -> 1x1 expand, added to
its input; aggregated transformations give more paths than a plain TDNN at equal cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.tdnn import TDNNLayer, to_channels_first
from speakertune.registry import MODELS


class AggregatedResidualBlock(nn.Module):
    def __init__(self, channels: int, width: int, cardinality: int, kernel: int,
                 dilation: int) -> None:
        super().__init__()
        if width % cardinality:
            raise ValueError(f"width={width} is not divisible by cardinality={cardinality}")
        self.body = nn.Sequential(
            TDNNLayer(channels, width, 1),
            TDNNLayer(width, width, kernel, dilation, groups=cardinality),
            nn.Conv1d(width, channels, 1),
            nn.BatchNorm1d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


@MODELS.register("aret")
class AggregatedResidualTDNN(nn.Module):
    def __init__(self, feat_dim: int, channels: int = 512, width: int = 256,
                 cardinality: int = 32, dilations: Sequence[int] = (2, 3, 4, 2, 3, 4),
                 kernel: int = 3, out_channels: int = 1500) -> None:
        super().__init__()
        self.stem = TDNNLayer(feat_dim, channels, 5)
        self.blocks = nn.Sequential(*(
            AggregatedResidualBlock(channels, width, cardinality, kernel, d) for d in dilations
        ))
        self.out = TDNNLayer(channels, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.stem(to_channels_first(x))))
