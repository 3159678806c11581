"""ResNet family on spectrogram 'images' (He et al. 2016), thin variant for speaker embedding.

Input [B, T, F] is treated as one-channel [B, 1, F, T]; the output flattens channels x
frequency into C: [B, C * F/8, T/8]. Base width 32 ("thin" ResNet34, as in WeSpeaker's
VoxCeleb recipes); depths 10/18/34 use basic blocks, 50/101/152/221/293 bottleneck blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.registry import MODELS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False), nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch),
        )
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out = ch * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, stride, 1, bias=False), nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


def _halve(n: int) -> int:
    return (n + 1) // 2  # a 3x3 (or 5x5) conv with stride 2 and 'same' padding


class ResNet(nn.Module):
    def __init__(self, feat_dim: int, block: type[nn.Module], layers: Sequence[int],
                 base_channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, base_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(base_channels),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch, freq = base_channels, feat_dim
        for i, n in enumerate(layers):
            ch = base_channels * 2**i
            stride = 1 if i == 0 else 2
            if stride == 2:
                freq = _halve(freq)
            for j in range(n):
                stages.append(block(in_ch, ch, stride if j == 0 else 1))
                in_ch = ch * block.expansion
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch * freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x.transpose(1, 2).unsqueeze(1)))
        b, c, f, t = x.shape
        return x.reshape(b, c * f, t)


def _register(name: str, block: type[nn.Module], layers: tuple[int, ...]) -> None:
    def build(feat_dim: int, base_channels: int = 32) -> ResNet:
        return ResNet(feat_dim, block, layers, base_channels)

    build.__name__ = name
    MODELS.register(name)(build)


for _name, _block, _layers in (
    ("resnet10", BasicBlock, (1, 1, 1, 1)),
    ("resnet18", BasicBlock, (2, 2, 2, 2)),
    ("resnet34", BasicBlock, (3, 4, 6, 3)),
    ("resnet50", Bottleneck, (3, 4, 6, 3)),
    ("resnet101", Bottleneck, (3, 4, 23, 3)),
    # WeSpeaker's deep ResNets (wespeaker/models/resnet.py), its VoxCeleb records at 0.43%
    ("resnet152", Bottleneck, (3, 8, 36, 3)),
    ("resnet221", Bottleneck, (6, 16, 48, 3)),
    ("resnet293", Bottleneck, (10, 20, 64, 3)),
):
    _register(_name, _block, _layers)
