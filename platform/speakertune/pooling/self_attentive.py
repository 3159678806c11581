"""Multi-head self-attentive pooling (Zhu et al. 2018, after Lin et al. 2017):
A = softmax_t(W2 tanh(W1 H)), one weighted mean per head, concatenated -> [B, heads * C]."""

from __future__ import annotations

import torch
from torch import nn

from speakertune.registry import POOLINGS


@POOLINGS.register("self_attentive")
class SelfAttentivePooling(nn.Module):
    def __init__(self, in_channels: int, attention_dim: int = 500, heads: int = 5) -> None:
        super().__init__()
        self.w1 = nn.Conv1d(in_channels, attention_dim, 1, bias=False)
        self.w2 = nn.Conv1d(attention_dim, heads, 1, bias=False)
        self.heads = heads
        self.out_dim = heads * in_channels
        self.last_attention: torch.Tensor | None = None  # for the optional ||AA^T - I|| penalty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.w2(torch.tanh(self.w1(x))), dim=2)  # [B, heads, T]
        self.last_attention = a
        return torch.bmm(a, x.transpose(1, 2)).flatten(1)  # [B, heads * C]

    def penalty(self) -> torch.Tensor:
        """Frobenius ||A A^T - I||^2 of the last forward, pushing heads to differ (Lin et al.)."""
        if self.last_attention is None:
            raise RuntimeError("penalty() needs a forward pass first")
        a = self.last_attention
        eye = torch.eye(self.heads, dtype=a.dtype, device=a.device)
        return (torch.bmm(a, a.transpose(1, 2)) - eye).square().sum(dim=(1, 2)).mean()
