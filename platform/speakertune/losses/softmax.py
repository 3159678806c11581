"""Plain softmax cross-entropy over a linear speaker classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.registry import LOSSES


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == labels).float().mean()


@LOSSES.register("softmax")
class SoftmaxLoss(nn.Module):
    end_to_end = False

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(emb)
        return F.cross_entropy(logits, labels), accuracy(logits.detach(), labels)

    def set_margin_factor(self, factor: float) -> None:
        """No margin to warm up."""
