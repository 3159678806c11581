"""ResCNN from Deep Speaker (Li et al. 2017): stages of a 5x5 stride-2 conv followed by
residual blocks of 3x3 convs, with clipped ReLU min(max(x, 0), 20).

Output flattens channels x frequency: [B, channels[-1] * F/16, T/16].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.resnet import _halve
from speakertune.registry import MODELS

CLIP = 20.0  # the paper's ReLU ceiling, keeps activations bounded


def _clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0.0, max=CLIP)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _clipped_relu(self.bn1(self.conv1(x)))
        return _clipped_relu(self.bn2(self.conv2(y)) + x)


class Stage(nn.Module):
    def __init__(self, in_ch: int, ch: int, blocks: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_ch, ch, 5, 2, 2, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.blocks = nn.Sequential(*(ResBlock(ch) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(_clipped_relu(self.bn(self.down(x))))


@MODELS.register("rescnn")
class ResCNN(nn.Module):
    def __init__(self, feat_dim: int, channels: Sequence[int] = (64, 128, 256, 512),
                 blocks: int = 3) -> None:
        super().__init__()
        stages, in_ch, freq = [], 1, feat_dim
        for ch in channels:
            stages.append(Stage(in_ch, ch, blocks))
            in_ch, freq = ch, _halve(freq)
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch * freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x.transpose(1, 2).unsqueeze(1))
        b, c, f, t = x.shape
        return x.reshape(b, c * f, t)
