"""Extended TDNN (Snyder et al. 2019): x-vector TDNN layers interleaved with 1x1 dense layers,
one more dilated layer ({t-4,t,t+4}) and a 1500-dim last frame layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.tdnn import TDNNLayer, to_channels_first
from speakertune.registry import MODELS


@MODELS.register("etdnn")
class ExtendedTDNN(nn.Module):
    def __init__(self, feat_dim: int, channels: int = 512, out_channels: int = 1500,
                 kernels: Sequence[int] = (5, 3, 3, 3),
                 dilations: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = feat_dim
        for k, d in zip(kernels, dilations, strict=True):
            layers += [TDNNLayer(in_ch, channels, k, d), TDNNLayer(channels, channels, 1)]
            in_ch = channels
        layers.append(TDNNLayer(channels, out_channels, 1))
        self.layers = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(to_channels_first(x))
