"""LSTM encoder as in GE2E (Wan et al. 2018): 3 layers of 768 cells with 256-dim projections.

The seed fed it 40-dim MFCCs; the frame-level output is the hidden sequence [B, H, T].
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from speakertune.registry import MODELS

# Informational only: projected LSTMs use PyTorch's reference kernel instead of oneDNN.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


@MODELS.register("lstm")
class LSTMEncoder(nn.Module):
    def __init__(self, feat_dim: int, hidden: int = 768, proj: int = 256, layers: int = 3,
                 bidirectional: bool = False) -> None:
        super().__init__()
        if proj >= hidden:
            raise ValueError(f"proj={proj} must be smaller than hidden={hidden} (0 disables it)")
        self.lstm = nn.LSTM(feat_dim, hidden, num_layers=layers, batch_first=True,
                            proj_size=proj, bidirectional=bidirectional)
        self.out_channels = (proj or hidden) * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return out.transpose(1, 2)
