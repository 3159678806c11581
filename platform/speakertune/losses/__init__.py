"""Speaker losses: classification heads, auxiliary terms and end-to-end metric losses.

Importing this package registers every loss in ``speakertune.registry.LOSSES``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speakertune.config import ConfigError
from speakertune.losses import (  # noqa: F401  (imported to register the losses)
    auxiliary,
    ge2e,
    margin,
    pairwise,
    prototypical,
    softmax,
)
from speakertune.losses.episodes import EpisodeError
from speakertune.losses.speaker_batches import SpeakerBatcher
from speakertune.registry import LOSSES, build_checked

AUXILIARY = ("center", "ring")


class SpeakerLoss(nn.Module):
    """A main loss plus weighted auxiliary terms; ``forward(emb, labels) -> (loss, acc|None)``."""

    def __init__(self, main: nn.Module, aux: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.main = main
        self.aux = nn.ModuleList(aux or [])
        self.end_to_end = bool(main.end_to_end)

    def forward(self, emb: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss, acc = self.main(emb, labels)
        for term in self.aux:
            loss = loss + term.weight * term(emb, labels)[0]
        return loss, acc

    def set_margin_factor(self, factor: float) -> None:
        """Margin warm-up: scale the margin by ``factor`` in [0, 1] (no-op without margin)."""
        self.main.set_margin_factor(factor)


def build_loss(loss_cfg: dict[str, Any] | str, embed_dim: int, num_classes: int) -> SpeakerLoss:
    """E.g. ``{"name": "aam_softmax", "margin": 0.2, "scale": 30,
    "aux": [{"name": "center", "weight": 0.01}]}``. ``center``/``ring`` named alone ride on a
    plain softmax. Bad names/options raise a one-line ``ConfigError`` naming the field."""
    cfg = {"name": loss_cfg} if isinstance(loss_cfg, str) else dict(loss_cfg)
    aux_cfgs = cfg.pop("aux", None) or []
    if isinstance(aux_cfgs, (dict, str)):
        aux_cfgs = [aux_cfgs]
    dims = {"embed_dim": embed_dim, "num_classes": num_classes}
    if cfg.get("name") in AUXILIARY:
        aux_cfgs, cfg = [cfg, *aux_cfgs], {"name": "softmax"}
    main = build_checked(LOSSES, cfg, "loss", **dims)
    aux = []
    for i, a in enumerate(aux_cfgs):
        a = {"name": a} if isinstance(a, str) else a
        where = f"loss.aux[{i}]"
        if a.get("name") not in AUXILIARY:
            raise ConfigError(
                f"{where}.name: {a.get('name')!r} is not an auxiliary loss "
                f"(choose from {', '.join(AUXILIARY)})"
            )
        aux.append(build_checked(LOSSES, a, where, **dims))
    return SpeakerLoss(main, aux)


__all__ = ["EpisodeError", "SpeakerBatcher", "SpeakerLoss", "build_loss"]
