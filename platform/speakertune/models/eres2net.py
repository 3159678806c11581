"""ERes2Net and ERes2NetV2 (Chen et al., Interspeech 2023 and 2024; 3D-Speaker): a Res2Net
ResNet34 over the filterbank whose blocks fuse their multi-scale splits with attention (local
fusion) and whose stages are fused bottom-up with the same attentional fusion (global fusion).

- ``eres2net``: 32 base channels (6.61M parameters with a 192-d embedding; 64 is
  "ERes2Net-large", 22.4M), width 32/64 of a block's channels per split, 2 splits; stages 3-4
  fuse their splits, and every stage's output is fused into the next (stages 1+2, +3, +4).
- ``eres2netv2``: 64 base channels, width 26/64, 2 splits (17.8M), only stages 3 and 4 fused:
  the published pruning of V1's cost for short utterances.

Activations are ReLU clipped at 20 inside the blocks, as published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.resnet import _halve
from speakertune.models.tdnn import to_channels_first
from speakertune.registry import MODELS


def _clipped_relu() -> nn.Module:
    return nn.Hardtanh(0.0, 20.0, inplace=True)


class AttentionalFusion(nn.Module):
    """``x * a + y * (2 - a)`` with ``a = 1 + tanh(MLP([x, y]))`` per channel and position
    (1x1 convolutions, bottleneck ``channels / r``)."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inner = channels // r
        self.att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(inplace=True),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = 1.0 + torch.tanh(self.att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)


class Res2Block(nn.Module):
    """1x1 to ``splits`` x ``width`` channels; each split's 3x3 convolution takes the previous
    split's output added to (``fuse``: attentionally fused with) its own; 1x1 to
    ``planes * expansion``; residual."""

    def __init__(self, in_ch: int, planes: int, stride: int, base_width: int, splits: int,
                 expansion: int, fuse: bool) -> None:
        super().__init__()
        width = int(math.floor(planes * base_width / 64.0))
        out = planes * expansion
        self.width = width
        self.inp = nn.Sequential(nn.Conv2d(in_ch, width * splits, 1, stride, bias=False),
                                 nn.BatchNorm2d(width * splits), _clipped_relu())
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                          _clipped_relu())
            for _ in range(splits))
        self.fusions = nn.ModuleList(AttentionalFusion(width) for _ in range(splits - 1)) \
            if fuse else None
        self.out = nn.Sequential(nn.Conv2d(width * splits, out, 1, bias=False),
                                 nn.BatchNorm2d(out))
        self.skip = (nn.Identity() if stride == 1 and in_ch == out else nn.Sequential(
            nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out)))
        self.act = _clipped_relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts, prev = [], None
        for i, sp in enumerate(torch.split(self.inp(x), self.width, dim=1)):
            if prev is not None:
                sp = self.fusions[i - 1](prev, sp) if self.fusions is not None else prev + sp
            prev = self.convs[i](sp)
            parts.append(prev)
        return self.act(self.out(torch.cat(parts, dim=1)) + self.skip(x))


class _ERes2NetBase(nn.Module):
    """Stem, four Res2Net stages (strides 1, 2, 2, 2 in both axes), the variant's fusions;
    features [B, T, F] -> [B, 8 * m * expansion * F/8, T/8]."""

    fused_stages: tuple[int, ...] = ()

    def __init__(self, feat_dim: int, channels: int, base_width: int, splits: int,
                 expansion: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        stages, in_ch = [], channels
        for i, n in enumerate(blocks):
            planes = channels * 2**i
            fuse = i >= 2  # the published blocks fuse their splits in stages 3 and 4
            stages.append(nn.Sequential(*[
                Res2Block(in_ch if j == 0 else planes * expansion, planes,
                          (1 if i == 0 else 2) if j == 0 else 1, base_width, splits, expansion,
                          fuse) for j in range(n)]))  # fmt: skip
            in_ch = planes * expansion
        self.stages = nn.ModuleList(stages)
        freq = feat_dim
        for _ in range(3):
            freq = _halve(freq)
        self.out_channels = in_ch * freq

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(to_channels_first(x).unsqueeze(1))
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


def _down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False)


@MODELS.register("eres2net")
class ERes2Net(_ERes2NetBase):
    """ERes2Net frame level: [B, T, F] -> [B, 16 m F/8, T/8] (m = ``channels``).

    >>> enc = ERes2Net(feat_dim=80)
    >>> enc(torch.randn(2, 200, 80)).shape
    torch.Size([2, 5120, 25])
    """

    def __init__(self, feat_dim: int, channels: int = 32, base_width: int = 32, splits: int = 2,
                 blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__(feat_dim, channels, base_width, splits, 2, blocks)
        widths = [channels * 2 * 2**i for i in range(4)]  # each stage's output channels
        self.down = nn.ModuleList(_down(widths[i], widths[i + 1]) for i in range(3))
        self.fuse = nn.ModuleList(AttentionalFusion(widths[i + 1]) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.stage_outputs(x)
        fused = outs[0]
        for i in range(3):  # bottom-up: (1 -> 2), (12 -> 3), (123 -> 4)
            fused = self.fuse[i](outs[i + 1], self.down[i](fused))
        return fused.flatten(1, 2)


@MODELS.register("eres2netv2")
class ERes2NetV2(_ERes2NetBase):
    """ERes2NetV2 frame level: [B, T, F] -> [B, 16 m F/8, T/8] (m = ``channels``).

    >>> enc = ERes2NetV2(feat_dim=80, channels=16)
    >>> enc(torch.randn(2, 200, 80)).shape
    torch.Size([2, 2560, 25])
    """

    def __init__(self, feat_dim: int, channels: int = 64, base_width: int = 26, splits: int = 2,
                 expansion: int = 2, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__(feat_dim, channels, base_width, splits, expansion, blocks)
        c3, c4 = channels * 4 * expansion, channels * 8 * expansion
        self.down = _down(c3, c4)
        self.fuse = AttentionalFusion(c4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.stage_outputs(x)
        return self.fuse(outs[3], self.down(outs[2])).flatten(1, 2)
