"""Auxiliary terms added to a classification loss with a weight: Center loss and Ring loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from speakertune.registry import LOSSES


@LOSSES.register("center")
class CenterLoss(nn.Module):
    """0.5 * mean ||x_i - c_{y_i}||^2 with learned class centres (Wen et al. 2016).

    The centres are parameters updated by the optimiser (the paper's alpha-rate update is the
    same gradient step on this term)."""

    end_to_end = False

    def __init__(self, embed_dim: int, num_classes: int, weight: float = 0.01) -> None:
        super().__init__()
        self.weight = float(weight)
        self.centers = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.01)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        return 0.5 * (emb - self.centers[labels]).square().sum(dim=1).mean(), None


@LOSSES.register("ring")
class RingLoss(nn.Module):
    """0.5 * mean (||x_i|| - R)^2 with a learned target norm R (Zheng et al. 2018).

    R starts at the mean norm of the first batch, as in the paper."""

    end_to_end = False

    def __init__(self, embed_dim: int, num_classes: int, weight: float = 0.01) -> None:
        super().__init__()
        self.weight = float(weight)
        self.radius = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        norms = emb.norm(dim=1)
        if not bool(self.initialised):
            with torch.no_grad():
                mean = norms.mean().detach().clone()
                if dist.is_available() and dist.is_initialized():
                    # every DDP rank must start from the same R, or the replicas drift apart
                    dist.all_reduce(mean)
                    mean /= dist.get_world_size()
                self.radius.fill_(mean.item())
                self.initialised.fill_(True)
        return 0.5 * (norms - self.radius).square().mean(), None
