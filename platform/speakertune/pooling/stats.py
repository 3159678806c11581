"""Statistics pooling: per-channel mean and standard deviation over time (x-vector)."""

from __future__ import annotations

import torch
from torch import nn

from speakertune.registry import POOLINGS

# Floor on the variance so that sqrt has a finite gradient on constant channels.
VAR_FLOOR = 1e-5


def mean_std(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C, T] (and optional weights [B, C|1, T] summing to 1 over T) -> [B, 2C]."""
    if weights is None:
        mean = x.mean(dim=2)
        var = x.var(dim=2, unbiased=False)
    else:
        mean = (weights * x).sum(dim=2)
        # Centred before squaring: E[x^2] - mean^2 cancels badly for large activations.
        var = (weights * (x - mean.unsqueeze(2)).square()).sum(dim=2)
    return torch.cat([mean, var.clamp(min=VAR_FLOOR).sqrt()], dim=1)


@POOLINGS.register("stats")
class StatsPooling(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_std(x)
