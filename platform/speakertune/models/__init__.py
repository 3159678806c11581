"""Speaker encoders: a registered frame-level network + a pooling + an embedding layer.

Importing this package registers every encoder in ``speakertune.registry.MODELS``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speakertune import pooling as _pooling  # noqa: F401  (registers the poolings)
from speakertune.models import (  # noqa: F401  (imported to register the encoders)
    aret,
    attention_lstm,
    campplus,
    dtdnn,
    ecapa_tdnn,
    eres2net,
    etdnn,
    ftdnn,
    lstm,
    redimnet,
    rescnn,
    resnet,
    simam_resnet,
    ssl_backends,
    tdnn,
)
from speakertune.models.cost import count_macs, count_parameters
from speakertune.registry import MODELS, POOLINGS, build_checked


class SpeakerEncoder(nn.Module):
    """features [B, T, F] -> frame level [B, C, T'] -> pooled [B, P] -> embedding [B, D].

    The embedding is BatchNorm + affine, as the ECAPA-TDNN head (and x-vector's segment6 affine).
    """

    def __init__(self, frame_level: nn.Module, pooling: nn.Module, feat_dim: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.frame_level = frame_level
        self.pooling = pooling
        self.embedding = nn.Sequential(
            nn.BatchNorm1d(pooling.out_dim), nn.Linear(pooling.out_dim, embed_dim)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.feat_dim:
            raise ValueError(
                f"SpeakerEncoder expects features [batch, frames, {self.feat_dim}], "
                f"got {list(feats.shape)}"
            )
        return self.embedding(self.pooling(self.frame_level(feats)))


class PooledAlready(nn.Module):
    """The pooling of a frame level network that pools by itself (its output is [B, dim])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def build_encoder(model_cfg: dict[str, Any] | str, pooling_cfg: dict[str, Any] | str,
                  feat_dim: int, embed_dim: int) -> SpeakerEncoder:
    """Build e.g. ``({"name": "ecapa_tdnn", "channels": 512}, {"name": "attentive_stats"},
    80, 192)``. Unknown names/options raise a one-line error naming the config field."""
    frame_level = build_checked(MODELS, model_cfg, "model", feat_dim=feat_dim)
    if getattr(frame_level, "pools_itself", False):  # e.g. ssl_mhfa: ``pooling`` is unused
        pooling: nn.Module = PooledAlready(frame_level.out_channels)
    else:
        pooling = build_checked(POOLINGS, pooling_cfg, "pooling",
                                in_channels=frame_level.out_channels)
    return SpeakerEncoder(frame_level, pooling, feat_dim, embed_dim)


@torch.no_grad()
def apply_constraints(module: nn.Module) -> None:
    """Run every parameter constraint inside ``module`` (FTDNN's semi-orthogonal step).

    The trainer calls this after each ``optimizer.step()``; it is a no-op for other encoders.
    """
    for sub in module.modules():
        constrain = getattr(sub, "constrain_weight", None)
        if callable(constrain):
            constrain()


__all__ = ["SpeakerEncoder", "apply_constraints", "build_encoder", "count_macs", "count_parameters"]
