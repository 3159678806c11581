"""Pair/triplet metric losses on a batch of labelled embeddings: triplet and contrastive.

Distances: 'cosine' = 1 - cos, 'l2' = Euclidean between L2-normalised embeddings (FaceNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.losses.episodes import as_episode
from speakertune.registry import LOSSES


def pairwise_distance(emb: torch.Tensor, distance: str) -> torch.Tensor:
    e = F.normalize(emb, dim=1)
    if distance == "cosine":
        return 1.0 - e @ e.T
    # sqrt of a clamped square: cdist's gradient is NaN on the zero diagonal.
    sq = (2.0 - 2.0 * (e @ e.T)).clamp(min=1e-12)
    return sq.sqrt()


def _check_distance(distance: str) -> None:
    if distance not in ("cosine", "l2"):
        raise ValueError(f"distance must be 'cosine' or 'l2', got {distance!r}")


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """mean relu(d(a, p) - d(a, n) + margin) (Schroff et al. 2015).

    ``mining='hard'``: per anchor the farthest positive and the nearest negative (batch-hard,
    Hermans et al. 2017). ``mining='semi_hard'``: every anchor-positive pair with the nearest
    negative that is still farther than the positive (FaceNet); if there is none, the farthest
    negative.
    """

    end_to_end = True

    def __init__(self, embed_dim: int | None = None, num_classes: int | None = None,
                 margin: float = 0.2, distance: str = "cosine", mining: str = "semi_hard") -> None:
        super().__init__()
        _check_distance(distance)
        if mining not in ("hard", "semi_hard"):
            raise ValueError(f"mining must be 'hard' or 'semi_hard', got {mining!r}")
        self.margin, self.distance, self.mining = float(margin), distance, mining

    def set_margin_factor(self, factor: float) -> None:
        """No-op: the warm-up schedule is for classification margins; a metric loss with
        margin 0 has no pull on negatives."""

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        as_episode(emb, labels, "triplet")
        d = pairwise_distance(emb, self.distance)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
        pos_mask, neg_mask = same & ~eye, ~same
        margin = self.margin
        if self.mining == "hard":
            d_ap = d.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
            d_an = d.masked_fill(~neg_mask, float("inf")).amin(dim=1)
            return F.relu(d_ap - d_an + margin).mean(), None
        a_idx, p_idx = pos_mask.nonzero(as_tuple=True)
        d_ap = d[a_idx, p_idx]  # [P]
        d_an = d[a_idx]  # [P, B]
        neg = neg_mask[a_idx]
        semi = neg & (d_an > d_ap[:, None])
        nearest_semi = d_an.masked_fill(~semi, float("inf")).amin(dim=1)
        farthest = d_an.masked_fill(~neg, float("-inf")).amax(dim=1)
        chosen = torch.where(semi.any(dim=1), nearest_semi, farthest)
        return F.relu(d_ap - chosen + margin).mean(), None


@LOSSES.register("contrastive")
class ContrastiveLoss(nn.Module):
    """Hadsell et al. (2006) over all pairs: d^2 for same-speaker pairs, relu(margin - d)^2 for
    different-speaker pairs; the two means are averaged so that the many negative pairs do not
    swamp the few positives."""

    end_to_end = True

    def __init__(self, embed_dim: int | None = None, num_classes: int | None = None,
                 margin: float = 1.0, distance: str = "l2") -> None:
        super().__init__()
        _check_distance(distance)
        self.margin, self.distance = float(margin), distance

    def set_margin_factor(self, factor: float) -> None:
        """No-op: the warm-up schedule is for classification margins; a metric loss with
        margin 0 has no pull on negatives."""

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        as_episode(emb, labels, "contrastive")
        d = pairwise_distance(emb, self.distance)
        same = labels[:, None] == labels[None, :]
        upper = torch.ones_like(same).triu(diagonal=1)
        pos = d[same & upper].square().mean()
        neg = F.relu(self.margin - d[~same & upper]).square().mean()
        return 0.5 * (pos + neg), None
