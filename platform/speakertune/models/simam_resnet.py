"""SimAM-ResNet (Qin et al., ICASSP 2022; WeSpeaker's VoxBlink2 models): a ResNet whose basic
blocks weight every time-frequency unit by SimAM, a parameter-free attention.

SimAM scores each unit by how much it stands out from the other units of its channel (the
closed-form minimum of an energy function: the squared deviation over the channel's variance)
and scales it by the sigmoid of that score, so a block attends to salient regions without a
single added weight. The published models are wide (64 base channels): ``simam_resnet34`` has
the ResNet34 layout, ``simam_resnet100`` blocks of 6/16/24/3.
"""

from __future__ import annotations

import torch

from speakertune.models.resnet import BasicBlock, ResNet
from speakertune.registry import MODELS


def simam(x: torch.Tensor, lam: float = 1e-4) -> torch.Tensor:
    """``x`` [B, C, H, W] scaled by sigmoid(1/E): E is each unit's minimal energy in its channel."""
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=(2, 3), keepdim=True)).square()
    v = d.sum(dim=(2, 3), keepdim=True) / n
    return x * torch.sigmoid(d / (4 * (v + lam)) + 0.5)


class SimAMBlock(BasicBlock):
    """ResNet's basic block with SimAM on the residual branch before the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(simam(self.body(x)) + self.shortcut(x))


@MODELS.register("simam_resnet34")
def simam_resnet34(feat_dim: int, base_channels: int = 64) -> ResNet:
    """[B, T, F] -> [B, 8 m F/8, T/8] (m = ``base_channels``).

    >>> simam_resnet34(80, base_channels=8)(torch.randn(2, 64, 80)).shape
    torch.Size([2, 640, 8])
    """
    return ResNet(feat_dim, SimAMBlock, (3, 4, 6, 3), base_channels)


@MODELS.register("simam_resnet100")
def simam_resnet100(feat_dim: int, base_channels: int = 64) -> ResNet:
    """[B, T, F] -> [B, 8 m F/8, T/8], blocks of 6/16/24/3."""
    return ResNet(feat_dim, SimAMBlock, (6, 16, 24, 3), base_channels)
