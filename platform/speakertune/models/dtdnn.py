"""Densely connected TDNN (Yu & Li, Interspeech 2020): dense blocks of bottleneck TDNN layers,
each layer's output concatenated to its input, with 1x1 transition layers halving channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.tdnn import TDNNLayer, to_channels_first
from speakertune.registry import MODELS


def _bn_relu_conv(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (kernel - 1) // 2
    return [nn.BatchNorm1d(in_ch), nn.ReLU(inplace=True),
            nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=pad, bias=False)]


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bn_size: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_bn_relu_conv(in_ch, bn_size * growth),
            *_bn_relu_conv(bn_size * growth, growth, kernel, dilation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


@MODELS.register("dtdnn")
class DenselyConnectedTDNN(nn.Module):
    """Defaults follow the paper's D-TDNN: stem 128, growth 64, bottleneck x2, blocks of 6 and
    12 layers with dilations 1 and 3."""

    def __init__(self, feat_dim: int, channels: int = 128, growth: int = 64, bn_size: int = 2,
                 block_layers: Sequence[int] = (6, 12), dilations: Sequence[int] = (1, 3),
                 kernel: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [TDNNLayer(feat_dim, channels, 5)]
        ch = channels
        for n, d in zip(block_layers, dilations, strict=True):
            for _ in range(n):
                layers.append(DenseLayer(ch, growth, bn_size, kernel, d))
                ch += growth
            layers += _bn_relu_conv(ch, ch // 2)  # transition
            ch //= 2
        layers += [nn.BatchNorm1d(ch), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(to_channels_first(x))
