"""Prototypical (Snell et al. 2017) and angular prototypical (Chung et al. 2020) losses.

In each N x M episode the last utterance of every speaker is the query and the mean of the
other M-1 is the prototype; the query is classified among the N prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.losses.episodes import as_episode
from speakertune.registry import LOSSES


def _split(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return e[:, -1], e[:, :-1].mean(dim=1)  # queries [N, D], prototypes [N, D]


def _ce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.arange(logits.shape[0], device=logits.device)
    acc = (logits.detach().argmax(dim=1) == target).float().mean()
    return F.cross_entropy(logits, target), acc


@LOSSES.register("prototypical")
class PrototypicalLoss(nn.Module):
    """Logits are negative squared Euclidean distances to the prototypes."""

    end_to_end = True

    def __init__(self, embed_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query, proto = _split(as_episode(emb, labels, "prototypical"))
        return _ce(-torch.cdist(query, proto).square())

    def set_margin_factor(self, factor: float) -> None:
        """No margin to warm up."""


@LOSSES.register("angular_prototypical")
class AngularPrototypicalLoss(nn.Module):
    """Logits w cos(query, prototype) + b with learned w > 0, b (as GE2E)."""

    end_to_end = True

    def __init__(self, embed_dim: int | None = None, num_classes: int | None = None,
                 init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query, proto = _split(as_episode(emb, labels, "angular_prototypical"))
        cos = F.normalize(query, dim=1) @ F.normalize(proto, dim=1).T
        return _ce(self.w.clamp(min=1e-6) * cos + self.b)

    def set_margin_factor(self, factor: float) -> None:
        """No margin to warm up."""
