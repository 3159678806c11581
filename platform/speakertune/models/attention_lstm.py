"""Attention-based LSTM: the GE2E LSTM followed by multi-head self-attention over its frames.

Attention lets every frame see the whole utterance before pooling (cf. Chowdhury et al. 2018,
who attend over LSTM outputs); the pooling chosen in the config then summarises the frames.
"""

from __future__ import annotations

import torch
from torch import nn

from speakertune.models.lstm import LSTMEncoder
from speakertune.registry import MODELS


@MODELS.register("attention_lstm")
class AttentionLSTMEncoder(nn.Module):
    def __init__(self, feat_dim: int, hidden: int = 768, proj: int = 256, layers: int = 3,
                 heads: int = 4, bidirectional: bool = False) -> None:
        super().__init__()
        self.lstm = LSTMEncoder(feat_dim, hidden, proj, layers, bidirectional)
        dim = self.lstm.out_channels
        if dim % heads:
            raise ValueError(f"LSTM output size {dim} is not divisible by heads={heads}")
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lstm(x).transpose(1, 2)  # [B, T, H]
        a, _ = self.attention(h, h, h, need_weights=False)
        return self.norm(h + a).transpose(1, 2)
