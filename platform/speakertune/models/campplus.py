"""CAM++ (Wang et al., Interspeech 2023, 3D-Speaker): a small 2-D residual front over the
filterbank, then a densely connected TDNN whose layers scale their output by a context-aware
mask computed from the utterance mean and 100-frame segment means of their input.

The front keeps frequency resolution where a TDNN has none (so it handles the spectral detail
a ResNet sees, at a fraction of the cost); the masks let each dense layer attend to the
speaker's context without attention's quadratic cost. Defaults are the published model: 32
front channels, a stride-2 stem of 128 channels, dense blocks of 12/24/16 layers (kernel 3,
dilations 1/2/2, growth 32, bottleneck 4x), each followed by a transition halving channels.
With statistics pooling and a 512-d embedding it has 7.18M parameters, as 3D-Speaker's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.resnet import _halve
from speakertune.models.tdnn import to_channels_first
from speakertune.registry import MODELS


def _bn_relu(ch: int, dims: int = 1) -> list[nn.Module]:
    return [nn.BatchNorm1d(ch) if dims == 1 else nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]


class _FreqResBlock(nn.Module):
    """Two 3x3 convolutions with a residual path; ``stride`` subsamples frequency only."""

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, ch, 3, (stride, 1), 1, bias=False), *_bn_relu(ch, 2),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))
        self.skip = (nn.Identity() if stride == 1 and in_ch == ch else nn.Sequential(
            nn.Conv2d(in_ch, ch, 1, (stride, 1), bias=False), nn.BatchNorm2d(ch)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class FrontConv(nn.Module):
    """[B, F, T] -> [B, ch * F/8, T]: the published "FCM" front (two stages of two residual
    blocks, each stage halving frequency, and a last frequency-halving convolution)."""

    def __init__(self, feat_dim: int, ch: int = 32, blocks: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, ch, 3, 1, 1, bias=False), *_bn_relu(ch, 2)]
        freq = feat_dim
        for n in blocks:
            layers += [_FreqResBlock(ch, ch, 2)] + [_FreqResBlock(ch, ch, 1) for _ in range(n - 1)]
            freq = _halve(freq)
        layers += [nn.Conv2d(ch, ch, 3, (2, 1), 1, bias=False), *_bn_relu(ch, 2)]
        self.body = nn.Sequential(*layers)
        self.out_channels = ch * _halve(freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x.unsqueeze(1))  # [B, ch, F/8, T]
        return y.flatten(1, 2)


class ContextMaskedLayer(nn.Module):
    """One dense layer: BN-ReLU-1x1 bottleneck, BN-ReLU, then a dilated convolution whose
    output is scaled by sigmoid(MLP(utterance mean + segment mean)) of its input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int, kernel: int, dilation: int,
                 segment: int = 100) -> None:
        super().__init__()
        self.pre = nn.Sequential(*_bn_relu(in_ch), nn.Conv1d(in_ch, bottleneck, 1, bias=False),
                                 *_bn_relu(bottleneck))
        self.local = nn.Conv1d(bottleneck, growth, kernel, dilation=dilation,
                               padding=dilation * (kernel - 1) // 2, bias=False)
        self.mask = nn.Sequential(nn.Conv1d(bottleneck, bottleneck // 2, 1), nn.ReLU(inplace=True),
                                  nn.Conv1d(bottleneck // 2, growth, 1), nn.Sigmoid())
        self.segment = segment

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Each frame's utterance mean plus the mean of its ``segment``-frame segment."""
        seg = nn.functional.avg_pool1d(x, self.segment, self.segment, ceil_mode=True)
        seg = seg.repeat_interleave(self.segment, dim=-1)[..., : x.shape[-1]]
        return x.mean(dim=-1, keepdim=True) + seg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return torch.cat([x, self.local(h) * self.mask(self.context(h))], dim=1)


@MODELS.register("campplus")
class CAMPlusPlus(nn.Module):
    """CAM++ frame level: features [B, T, F] -> [B, C, T/2] (C = 512 at the defaults).

    >>> enc = CAMPlusPlus(feat_dim=80)
    >>> enc(torch.randn(2, 200, 80)).shape
    torch.Size([2, 512, 100])
    """

    def __init__(self, feat_dim: int, front_channels: int = 32, channels: int = 128,
                 growth: int = 32, bn_size: int = 4, block_layers: Sequence[int] = (12, 24, 16),
                 dilations: Sequence[int] = (1, 2, 2), kernel: int = 3) -> None:
        super().__init__()
        self.front = FrontConv(feat_dim, front_channels)
        layers: list[nn.Module] = [
            nn.Conv1d(self.front.out_channels, channels, 5, stride=2, padding=2, bias=False),
            *_bn_relu(channels)]
        ch = channels
        for n, d in zip(block_layers, dilations, strict=True):
            for _ in range(n):
                layers.append(ContextMaskedLayer(ch, growth, bn_size * growth, kernel, d))
                ch += growth
            layers += [*_bn_relu(ch), nn.Conv1d(ch, ch // 2, 1, bias=False)]  # transition
            ch //= 2
        layers += _bn_relu(ch)
        self.tdnn = nn.Sequential(*layers)
        self.out_channels = ch
        for m in self.tdnn.modules():  # the published init: with torch's default the 52
            if isinstance(m, nn.Conv1d):  # dense layers' output shrinks to nearly a constant
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tdnn(self.front(to_channels_first(x)))
