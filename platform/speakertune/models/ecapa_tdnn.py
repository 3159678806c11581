"""ECAPA-TDNN frame level (Desplanques et al. 2020): SE-Res2Blocks + multi-layer aggregation.

The paper's attentive statistics pooling lives in ``speakertune.pooling.attentive_stats``
(the default pooling of the project) and the BN + linear embedding in ``SpeakerEncoder``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speakertune.models.tdnn import TDNNLayer, to_channels_first
from speakertune.registry import MODELS


class SqueezeExcitation(nn.Module):
    """Channel gates from the utterance mean (Hu et al. 2018)."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Conv1d(channels, bottleneck, 1)
        self.up = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(self.up(torch.relu(self.down(s))))


class Res2Conv(nn.Module):
    """Res2Net split: scale-1 hierarchical dilated convs over channel groups (Gao et al. 2019)."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels={channels} is not divisible by res2 scale={scale}")
        width = channels // scale
        self.scale = scale
        self.convs = nn.ModuleList(
            TDNNLayer(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outs = [parts[0]]
        y = None
        for conv, part in zip(self.convs, parts[1:]):
            y = conv(part if y is None else part + y)
            outs.append(y)
        return torch.cat(outs, dim=1)


class SERes2Block(nn.Module):
    """1x1 TDNN -> Res2 dilated conv -> 1x1 TDNN -> SE, with a residual connection."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int,
                 se_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            TDNNLayer(channels, channels, 1),
            Res2Conv(channels, scale, kernel, dilation),
            TDNNLayer(channels, channels, 1),
            SqueezeExcitation(channels, se_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


@MODELS.register("ecapa_tdnn")
class ECAPATDNN(nn.Module):
    """Defaults: C=512, kernels 5/3/3/3, dilations 1/2/3/4, Res2 scale 8, SE 128, MFA 1536.

    The paper keeps the aggregation layer at 1536 channels also for C=1024 (14.7M parameters);
    SpeechBrain's C=1024 recipe uses ``mfa_channels=3072``.
    """

    def __init__(self, feat_dim: int, channels: int = 512, mfa_channels: int = 1536,
                 kernel: int = 3, dilations: tuple[int, ...] = (2, 3, 4), scale: int = 8,
                 se_channels: int = 128) -> None:
        super().__init__()
        self.stem = TDNNLayer(feat_dim, channels, 5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, kernel, d, scale, se_channels) for d in dilations
        )
        self.mfa = TDNNLayer(channels * len(dilations), mfa_channels, 1)
        self.out_channels = mfa_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(to_channels_first(x))
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.mfa(torch.cat(outs, dim=1))


@MODELS.register("ecapa_tdnn_c1024")
class ECAPATDNN1024(ECAPATDNN):
    """The paper's large size as a name a space can pick: C=1024 (MFA 1536, 14.7M parameters
    with attentive statistics and a 192-d embedding).

    >>> ECAPATDNN1024(feat_dim=80).out_channels
    1536
    """

    def __init__(self, feat_dim: int, channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(feat_dim, channels, **kwargs)
