"""GhostVLAD pooling (Zhong et al. 2018; Xie et al. 2019 for speakers).

NetVLAD (Arandjelovic et al. 2016) softly assigns frames to K clusters and sums residuals to
the centroids; G extra 'ghost' clusters take part in the assignment but are dropped, so
noisy frames can go there without polluting the descriptor. Output [B, K * C], L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.registry import POOLINGS


@POOLINGS.register("ghostvlad")
class GhostVLADPooling(nn.Module):
    def __init__(self, in_channels: int, clusters: int = 8, ghost_clusters: int = 2) -> None:
        super().__init__()
        if clusters < 1 or ghost_clusters < 0:
            raise ValueError("clusters must be >= 1 and ghost_clusters >= 0")
        self.clusters = clusters
        self.assign = nn.Conv1d(in_channels, clusters + ghost_clusters, 1)
        self.centroids = nn.Parameter(torch.randn(clusters, in_channels) * in_channels**-0.5)
        self.out_dim = clusters * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.assign(x), dim=1)[:, : self.clusters]  # [B, K, T]
        # sum_t a_kt (x_t - c_k) = A X^T - (sum_t a_kt) c_k
        v = torch.bmm(a, x.transpose(1, 2)) - a.sum(dim=2, keepdim=True) * self.centroids
        v = F.normalize(v, dim=2)  # intra-normalisation per cluster
        return F.normalize(v.flatten(1), dim=1)
