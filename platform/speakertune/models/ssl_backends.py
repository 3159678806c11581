"""Speaker back ends over a self-supervised model's hidden layers (``models.ssl``).

- ``ssl_ecapa``: a learned softmax-weighted sum of all hidden layers (SUPERB's recipe), mean
  normalised per utterance (WeSpeaker's CMN on the layer sum), then ECAPA-TDNN as the frame
  level network; the config's ``pooling`` pools its output as for any encoder.
- ``ssl_mhfa``: multi-head factorized attentive pooling (Peng et al., SLT 2022): keys and
  values are two different layer-weighted sums, both compressed; each head attends over time
  with weights from the keys and pools the values. It pools by itself (``pools_itself``): the
  config's ``pooling`` is not used, and the encoder's BN + linear embedding follows it.

Both take every option of ``SSLBackbone`` (arch, size, weights, finetune, ...) by name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from speakertune.config import ConfigError
from speakertune.models.ecapa_tdnn import ECAPATDNN
from speakertune.models.redimnet_blocks import WeightedSum
from speakertune.models.ssl import SSLBackbone
from speakertune.registry import MODELS

# A tiny random backbone (2 layers, 32-d, a 2-layer conv extractor of stride 20) for examples
# and tests; real runs leave these out and get the ``size`` preset.
TINY: dict[str, Any] = {"ssl_layers": 2, "ssl_dim": 32, "ssl_heads": 2, "ssl_ffn_dim": 64,
                        "conv_layers": [[16, 10, 5], [16, 4, 4]], "pos_conv_kernel": 8,
                        "pos_conv_groups": 4}


def build_backbone(name: str, options: dict[str, Any]) -> SSLBackbone:
    """``SSLBackbone(**options)``; an option it does not take raises the registry's error."""
    accepted = inspect.signature(SSLBackbone).parameters
    for key in options:
        if key not in accepted:
            raise ConfigError(f"model.{key}: unknown option for model {name!r} "
                              f"(accepted: {', '.join(accepted)})")
    return SSLBackbone(**options)


def check_waveform_input(cfg: dict[str, Any]) -> None:
    """An SSL encoder needs ``features.name: waveform``, which feeds nothing else (a merged
    trial config); SpecAugment's bands would cut samples out of every frame."""
    model = cfg["model"] if isinstance(cfg["model"], dict) else {"name": cfg["model"]}
    if model.get("name") not in MODELS:
        return  # the builder names an unknown model
    wants = bool(getattr(MODELS.get(model["name"]), "wants_waveform", False))
    waveform = cfg["features"].get("name") == "waveform"
    if wants and not waveform:
        raise ConfigError(f"features.name: model {model['name']!r} takes raw audio: "
                          "set features.name: waveform")
    if waveform and not wants:
        raise ConfigError(f"features.name: waveform feeds only the SSL encoders "
                          f"(ssl_ecapa, ssl_mhfa), not {model['name']!r}")
    if waveform and float(cfg["augment"].get("specaug_prob", 0) or 0) > 0:
        raise ConfigError("augment.specaug_prob: SpecAugment masks spectral bands; "
                          "it does not apply to features.name: waveform")


class _SSLEncoder(nn.Module):
    """What both back ends share: raw-audio input, and the SSL part's learning-rate group."""

    wants_waveform = True  # preflight: these need ``features.name: waveform``

    def __init__(self, name: str, feat_dim: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.hop = int(feat_dim)
        self.ssl = build_backbone(name, options)

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        return self.ssl.param_groups()


@MODELS.register("ssl_ecapa")
class SSLECAPA(_SSLEncoder):
    """Waveform frames [B, T, hop] -> layer sum [B, T', D] -> ECAPA-TDNN [B, mfa_channels, T'].

    >>> enc = SSLECAPA(160, channels=16, mfa_channels=48, scale=4, se_channels=8, **TINY)
    >>> enc(torch.randn(2, 50, 160)).shape
    torch.Size([2, 48, 399])
    """

    def __init__(self, feat_dim: int, channels: int = 512, mfa_channels: int = 1536,
                 scale: int = 8, se_channels: int = 128, **ssl: Any) -> None:
        super().__init__("ssl_ecapa", feat_dim, ssl)
        self.mix = WeightedSum(self.ssl.num_hidden, 1)  # one weight per layer
        self.ecapa = ECAPATDNN(self.ssl.dim, channels, mfa_channels, scale=scale,
                               se_channels=se_channels)
        self.out_channels = mfa_channels

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.ssl(frames))
        return self.ecapa(x - x.mean(dim=1, keepdim=True))


@MODELS.register("ssl_mhfa")
class SSLMHFA(_SSLEncoder):
    """Waveform frames [B, T, hop] -> MHFA pooled [B, heads * compression].

    >>> enc = SSLMHFA(160, heads=4, compression=8, **TINY)
    >>> enc(torch.randn(2, 50, 160)).shape
    torch.Size([2, 32])
    """

    pools_itself = True

    def __init__(self, feat_dim: int, heads: int = 64, compression: int = 128,
                 **ssl: Any) -> None:
        super().__init__("ssl_mhfa", feat_dim, ssl)
        if heads < 1 or compression < 1:
            raise ValueError("heads and compression must be positive")
        n, dim = self.ssl.num_hidden, self.ssl.dim
        self.key_mix, self.value_mix = WeightedSum(n, 1), WeightedSum(n, 1)
        self.key_proj, self.value_proj = nn.Linear(dim, compression), nn.Linear(dim, compression)
        self.attention = nn.Linear(compression, heads)
        self.out_channels = heads * compression

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        hidden = self.ssl(frames)
        keys = self.key_proj(self.key_mix(hidden))  # [B, T', compression]
        values = self.value_proj(self.value_mix(hidden))
        weights = torch.softmax(self.attention(keys), dim=1)  # [B, T', heads], over time
        return torch.einsum("bth,btc->bhc", weights, values).flatten(1)
