"""Factorised TDNN (Povey et al. 2018) with the semi-orthogonal constraint step.

Each layer factorises a C x (2C) weight into a semi-orthogonal bottleneck (context {t-d, t})
followed by a free matrix (context {t, t+d}); layers take a skip connection from two layers
back, as in Kaldi's F-TDNN x-vector recipes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speakertune.models.tdnn import TDNNLayer, to_channels_first
from speakertune.registry import MODELS


class SemiOrthogonalConv1d(nn.Conv1d):
    """Kernel-2 dilated conv whose reshaped weight M [rows, cols] is kept semi-orthogonal.

    ``constrain_weight`` does one step of Povey et al. (2018), eq. (6)-(8): with P = M M^T and
    alpha^2 = tr(P P) / tr(P) (the 'floating' scale), M <- M - 4 nu (P - alpha^2 I) M with
    nu = 1 / (8 alpha^2). Applied after optimizer steps, it moves P toward alpha^2 I.
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int, pad_left: bool) -> None:
        super().__init__(in_ch, out_ch, 2, dilation=dilation, bias=False)
        # Left padding makes this conv see {t-d, t}; the next one pads right to see {t, t+d}.
        self.pad = (dilation, 0) if pad_left else (0, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """|| P / alpha^2 - I ||_F / sqrt(rows): 0 for an exactly (scaled) semi-orthogonal M."""
        m = self._matrix()
        p = m @ m.T
        alpha2 = (p * p).sum() / p.trace()
        eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
        return float(torch.linalg.matrix_norm(p / alpha2 - eye) / p.shape[0] ** 0.5)

    def _matrix(self) -> torch.Tensor:
        w = self.weight.reshape(self.weight.shape[0], -1)
        return w if w.shape[0] <= w.shape[1] else w.T

    @torch.no_grad()
    def constrain_weight(self) -> None:
        w = self.weight.reshape(self.weight.shape[0], -1)
        transpose = w.shape[0] > w.shape[1]
        m = (w.T if transpose else w).double()
        p = m @ m.T
        alpha2 = (p * p).sum() / p.trace()
        nu = 1.0 / (8.0 * alpha2)
        eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
        m = m - 4.0 * nu * (p - alpha2 * eye) @ m
        m = m.T if transpose else m
        self.weight.copy_(m.reshape(self.weight.shape).to(self.weight.dtype))


class FTDNNLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bottleneck: int, dilation: int) -> None:
        super().__init__()
        self.factor = SemiOrthogonalConv1d(in_ch, bottleneck, dilation, pad_left=True)
        self.affine = nn.Conv1d(bottleneck, out_ch, 2, dilation=dilation)
        self.pad = (0, dilation)
        self.post = nn.Sequential(nn.ReLU(inplace=True), nn.BatchNorm1d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.affine(F.pad(self.factor(x), self.pad)))


@MODELS.register("ftdnn")
class FactorizedTDNN(nn.Module):
    def __init__(self, feat_dim: int, channels: int = 1024, bottleneck: int = 256,
                 dilations: Sequence[int] = (2, 1, 3, 1, 3, 1, 3, 1, 3, 1),
                 out_channels: int = 1500) -> None:
        super().__init__()
        self.stem = TDNNLayer(feat_dim, channels, 5)
        self.layers = nn.ModuleList(
            FTDNNLayer(channels, channels, bottleneck, d) for d in dilations
        )
        self.out = TDNNLayer(channels, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(to_channels_first(x))
        prev = None
        for layer in self.layers:
            y = layer(x)
            if prev is not None:  # skip connection from two layers back
                y = y + prev
            prev, x = x, y
        return self.out(x)

    def constrain(self) -> None:
        """Semi-orthogonal step on every factorised layer (call after optimizer.step())."""
        with torch.no_grad():
            for layer in self.layers:
                layer.factor.constrain_weight()
