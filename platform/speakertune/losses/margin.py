"""Angular-margin softmax heads on cosine logits: A-Softmax, AM-Softmax, AAM-Softmax.

All three replace the target-class cosine cos(theta_y) by a harder function of the angle
and keep other classes' cosines. ``set_margin_factor(f)`` scales the margin by f in [0, 1]
for the margin warm-up schedule (f=0: plain (scaled) softmax on cosines).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.losses.softmax import accuracy
from speakertune.registry import LOSSES

# Keeps acos finite and differentiable at |cos| = 1.
COS_EPS = 1e-7
LOW_PRECISION = (torch.float16, torch.bfloat16)


class CosineMarginHead(nn.Module):
    """Shared parts: normalised class weights, cosine logits, margin factor, CE + accuracy."""

    end_to_end = False

    def __init__(self, embed_dim: int, num_classes: int, margin: float,
                 scale: float | None) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if scale is not None and scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.margin = float(margin)
        self.scale = scale
        self.factor = 1.0

    def set_margin_factor(self, factor: float) -> None:
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"margin factor must be in [0, 1], got {factor}")
        self.factor = float(factor)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Margins act on cosines near 1 (sqrt(1 - cos^2), acos): too coarse in fp16/bf16.
        with torch.autocast(emb.device.type, enabled=False):
            return self._forward(emb.float() if emb.dtype in LOW_PRECISION else emb, labels)

    def _forward(self, emb: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosine(emb)
        scale = self.scale if self.scale is not None else emb.norm(dim=1, keepdim=True)
        cos_y = cos.gather(1, labels[:, None])
        target = self.target_logit(cos_y, emb)
        logits = scale * cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(logits, labels), accuracy(cos.detach(), labels)


@LOSSES.register("am_softmax")
class AMSoftmax(CosineMarginHead):
    """Additive cosine margin, s * (cos(theta_y) - m) (Wang et al. 2018 AM-Softmax; CosFace).

    Defaults m=0.35, s=30 from the AM-Softmax paper."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.35,
                 scale: float = 30.0) -> None:
        super().__init__(embed_dim, num_classes, margin, scale)

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return cos_y - self.margin * self.factor


@LOSSES.register("aam_softmax")
class AAMSoftmax(CosineMarginHead):
    """Additive angular margin, s * cos(theta_y + m) (Deng et al. 2019 ArcFace).

    Defaults m=0.2, s=30 as used for speakers by ECAPA-TDNN (ArcFace used m=0.5, s=64).
    Past theta = pi - m, cos(theta + m) stops decreasing; like ArcFace we then use the
    CosFace-style fallback cos(theta) - m sin(m), or with ``easy_margin`` apply the margin
    only where cos(theta) > 0.
    """

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2,
                 scale: float = 30.0, easy_margin: bool = False) -> None:
        super().__init__(embed_dim, num_classes, margin, scale)
        self.easy_margin = easy_margin

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        m = self.margin * self.factor
        sin_y = (1.0 - cos_y.square()).clamp(min=0.0).sqrt()
        phi = cos_y * math.cos(m) - sin_y * math.sin(m)
        if self.easy_margin:
            return torch.where(cos_y > 0, phi, cos_y)
        return torch.where(cos_y > math.cos(math.pi - m), phi, cos_y - math.sin(math.pi - m) * m)


@LOSSES.register("a_softmax")
class ASoftmax(CosineMarginHead):
    """Multiplicative angular margin, ||x|| psi(theta_y) (Liu et al. 2017 SphereFace), with
    psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m].

    As in SphereFace the target logit is blended, (lambda cos + psi) / (1 + lambda), with the
    paper's final lambda_min = 5; the margin factor fades psi in from 0. ``scale=None`` (default)
    uses the feature norm as the scale, as in the paper; a number fixes it.
    """

    def __init__(self, embed_dim: int, num_classes: int, margin: int = 4,
                 scale: float | None = None, lambda_min: float = 5.0) -> None:
        if int(margin) != margin or margin < 1:
            raise ValueError(f"A-Softmax margin must be a positive integer, got {margin}")
        super().__init__(embed_dim, num_classes, margin, scale)
        self.lambda_min = lambda_min

    def target_logit(self, cos_y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        m = self.margin
        theta = torch.acos(cos_y.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))
        k = torch.floor(m * theta / math.pi).detach()
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        psi = sign * torch.cos(m * theta) - 2.0 * k
        weight = self.factor / (1.0 + self.lambda_min)
        return cos_y + weight * (psi - cos_y)
