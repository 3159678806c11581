"""x-vector TDNN (Snyder et al. 2018) as dilated Conv1d layers, and the shared TDNN layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.registry import MODELS


class TDNNLayer(nn.Sequential):
    """Conv1d -> ReLU -> BatchNorm: one time-delay layer with context ``kernel`` x ``dilation``.

    Zero 'same' padding keeps T' = T so that layers can be summed/concatenated and short
    crops still work.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=pad, groups=groups),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(out_ch),
        )


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, F] features -> [B, F, T] for Conv1d."""
    return x.transpose(1, 2)


@MODELS.register("tdnn")
class XVectorTDNN(nn.Module):
    """Frame layers 1-5 of the x-vector: contexts [t-2,t+2], {t-2,t,t+2}, {t-3,t,t+3}, {t}, {t}."""

    def __init__(self, feat_dim: int, channels: int = 512, out_channels: int = 1500,
                 kernels: Sequence[int] = (5, 3, 3, 1, 1),
                 dilations: Sequence[int] = (1, 2, 3, 1, 1)) -> None:
        super().__init__()
        if len(kernels) != len(dilations):
            raise ValueError("kernels and dilations must have the same length")
        dims = [feat_dim] + [channels] * (len(kernels) - 1) + [out_channels]
        self.layers = nn.Sequential(*(
            TDNNLayer(dims[i], dims[i + 1], k, d)
            for i, (k, d) in enumerate(zip(kernels, dilations))
        ))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(to_channels_first(x))
