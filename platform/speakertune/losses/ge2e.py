"""Generalised end-to-end loss (Wan et al. 2018), softmax and contrast variants.

S[j,i,k] = w cos(e_ji, c_k) + b, where e_ji are L2-normalised embeddings (as in the paper),
c_k is speaker k's centroid and, for k = j, the centroid excludes e_ji itself (the paper's
stabilising trick); w > 0 and b are learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.losses.episodes import as_episode
from speakertune.registry import LOSSES


@LOSSES.register("ge2e")
class GE2ELoss(nn.Module):
    end_to_end = True

    def __init__(self, embed_dim: int | None = None, num_classes: int | None = None,
                 variant: str = "softmax", init_w: float = 10.0, init_b: float = -5.0) -> None:
        """``embed_dim``/``num_classes`` are unused (every loss is built with them)."""
        super().__init__()
        if variant not in ("softmax", "contrast"):
            raise ValueError(f"variant must be 'softmax' or 'contrast', got {variant!r}")
        self.variant = variant
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def similarity(self, e: torch.Tensor) -> torch.Tensor:
        """[N, M, D] -> S [N, M, N] (before w, b)."""
        n, m, _ = e.shape
        e = F.normalize(e, dim=2)
        total = e.sum(dim=1)  # [N, D]
        centroids = F.normalize(total / m, dim=1)
        own = F.normalize((total[:, None] - e) / (m - 1), dim=2)  # [N, M, D] exclusive
        sim = torch.einsum("nmd,kd->nmk", e, centroids)
        own_sim = (e * own).sum(dim=2)  # [N, M]
        mask = torch.eye(n, dtype=torch.bool, device=e.device)[:, None, :]  # k == j
        return torch.where(mask, own_sim[:, :, None], sim)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = as_episode(emb, labels, "ge2e")
        n, m, _ = e.shape
        s = self.w.clamp(min=1e-6) * self.similarity(e) + self.b
        target = torch.arange(n, device=e.device)[:, None].expand(n, m)
        if self.variant == "softmax":
            loss = F.cross_entropy(s.reshape(n * m, n), target.reshape(-1))
        else:
            sig = torch.sigmoid(s)
            pos = sig.gather(2, target[:, :, None]).squeeze(2)
            eye = torch.eye(n, dtype=torch.bool, device=e.device)[:, None, :]
            hardest_neg = sig.masked_fill(eye, float("-inf")).amax(dim=2)
            loss = (1.0 - pos + hardest_neg).mean()
        acc = (s.detach().argmax(dim=2) == target).float().mean()
        return loss, acc

    def set_margin_factor(self, factor: float) -> None:
        """No margin to warm up."""
