"""Attentive statistics pooling, channel- and context-dependent as in ECAPA-TDNN.

Okabe et al. (2018) weight frames by a learned attention; Desplanques et al. (2020) make the
weights per channel and feed the utterance mean/std as global context to the attention.
"""

from __future__ import annotations

import torch
from torch import nn

from speakertune.pooling.stats import mean_std
from speakertune.registry import POOLINGS


@POOLINGS.register("attentive_stats")
class AttentiveStatsPooling(nn.Module):
    def __init__(self, in_channels: int, attention_channels: int = 128,
                 global_context: bool = True, channel_wise: bool = True) -> None:
        super().__init__()
        self.global_context = global_context
        ctx_in = 3 * in_channels if global_context else in_channels
        self.attention = nn.Sequential(
            nn.Conv1d(ctx_in, attention_channels, 1),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(attention_channels),
            nn.Tanh(),
            nn.Conv1d(attention_channels, in_channels if channel_wise else 1, 1),
        )
        self.out_dim = 2 * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.global_context:
            stats = mean_std(x).unsqueeze(2)
            mean, std = stats.chunk(2, dim=1)
            # expand_as: the ONNX graph takes the shape from x itself (an expand to (-1, -1, t)
            # exported after CAM++'s segment pooling failed in onnxruntime)
            h = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)
        weights = torch.softmax(self.attention(h), dim=2)
        return mean_std(x, weights)
