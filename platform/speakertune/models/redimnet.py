"""ReDimNet (Yakovlev et al., Interspeech 2024; IDR&D): one network that alternates between a
2-D view [B, C, F, T] and a 1-D view [B, C*F, T] of the same activations.

The product C*F stays constant: each stage folds ``stride`` frequency bins into channels with
a (stride x 1) convolution, runs 2-D blocks, unfolds back to the 1-D view and (optionally)
adds a time-context block (depthwise convolutions + one self-attention layer). Every stage
starts from a learned softmax-weighted sum of all earlier outputs, and the frame-level output
is such a sum over all of them, so the time resolution is never reduced.

Presets ``b0``..``b6`` are the published models (WeSpeaker's ReDimNetB0..B6 configurations):
b0 expects 60 mel bins, the others 72. Frame-level parameters equal the official code's
(trainable ones: the original also holds a fixed weight of 1 for the first stage, left out).
With ``attentive_stats`` and a 192-d embedding the models have 1.0M (b0) to 15.0M (b6)
parameters, as published. MACs for 200 frames (torch's counter, attention products
included): b0 0.56 G, b2 1.31 G, b6 29.8 G, the same as the official code counted the same
way; the paper's table gives lower figures (0.43, 0.90, 20.27 G).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from speakertune.models.redimnet_blocks import (
    ChannelNorm,
    ConvNeXtBlock,
    ResBlock,
    TimeContext,
    WeightedSum,
    to_1d,
    to_2d,
)
from speakertune.models.tdnn import to_channels_first
from speakertune.registry import MODELS

# A stage: (frequency stride, 2-D blocks, channel expansion inside the blocks, reduction of
# C*F to the time-context block's width, or None for no such block).
StageSpec = tuple[int, int, int, int | None]

# size: (mel bins, C, 2-D block, group divisor, stages)
PRESETS: dict[str, tuple[int, int, str, int, tuple[StageSpec, ...]]] = {
    "b0": (60, 10, "resnet", 1,
           ((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10))),
    "b1": (72, 12, "convnext", 8,
           ((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8))),
    "b2": (72, 16, "convnext", 4,
           ((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
            (2, 4, 1, 4))),
    "b3": (72, 16, "resnet_fwse", 1,
           ((1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16),
            (2, 8, 1, 16))),
    "b4": (72, 32, "resnet_fwse", 1,
           ((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
            (2, 4, 1, 16))),
    "b5": (72, 32, "resnet_fwse", 16,
           ((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
            (2, 4, 1, 16))),
    "b6": (72, 32, "resnet", 32,
           ((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
            (2, 8, 1, 16))),
}
BLOCKS = ("convnext", "resnet", "resnet_fwse")


def _groups(channels: int, divisor: int, where: str) -> int:
    """Groups of a grouped convolution as the original: ``channels // divisor``, which must
    be at least 1 and divide ``channels``."""
    groups = channels // divisor
    if groups < 1 or channels % groups:
        raise ValueError(f"group_divisor={divisor} does not fit the {channels} channels of "
                         f"{where} (channels // group_divisor must divide channels)")
    return groups


def _block_2d(kind: str, channels: int, groups: int, freq: int) -> nn.Module:
    if kind == "convnext":
        return ConvNeXtBlock(channels, 3, groups)
    return ResBlock(channels, groups, freq if kind == "resnet_fwse" else None)


class ReDimStage(nn.Module):
    """Weighted sum of the outputs so far -> 2-D view [B, c, f, T] -> (stride x 1) conv to
    [B, stride*c*expansion, f/stride, T] -> 2-D blocks -> squeeze back to stride*c channels
    (when expansion != 1) -> 1-D view -> time-context block (when ``reduction`` is set)."""

    def __init__(self, index: int, channels: int, freq: int, spec: StageSpec, block: str,
                 group_divisor: int, heads: int) -> None:
        super().__init__()
        stride, blocks, expansion, reduction = spec
        flat = channels * freq
        self.channels, self.freq = channels, freq
        # the first stage has a single input; the original gives it a fixed weight of 1
        self.mix = WeightedSum(index + 1, flat) if index else None
        out_ch, out_f = channels * stride, freq // stride
        wide = out_ch * expansion
        where = f"stage {index}"
        layers: list[nn.Module] = [nn.Conv2d(channels, wide, (stride, 1), (stride, 1))]
        layers += [_block_2d(block, wide, _groups(wide, group_divisor, where), out_f)
                   for _ in range(blocks)]
        if expansion != 1:  # back to stride*c channels, so that c*f stays C*F
            layers.append(nn.Sequential(
                nn.Conv2d(wide, out_ch, 3, padding=1,
                          groups=_groups(out_ch, group_divisor, where)),
                nn.BatchNorm2d(out_ch, eps=1e-6), nn.GELU(), nn.Conv2d(out_ch, out_ch, 1)))
        self.body = nn.Sequential(*layers)
        self.context = (TimeContext(flat, _attention_width(flat, reduction, heads, where),
                                    heads) if reduction else nn.Identity())
        self.out_channels, self.out_freq = out_ch, out_f

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.mix(outputs) if self.mix is not None else outputs[0]
        x = self.body(to_2d(x, self.channels, self.freq))
        return self.context(to_1d(x))


def _attention_width(flat: int, reduction: int, heads: int, where: str) -> int:
    width = flat // reduction
    if width < 1 or width % heads:
        raise ValueError(f"attention width {flat} // {reduction} = {width} of {where} is not "
                         f"divisible by heads={heads}")
    return width


def _check_freq(feat_dim: int, size: str, stages: Sequence[StageSpec]) -> None:
    strides = math.prod(s[0] for s in stages)
    if feat_dim % strides:
        expected = "b0 expects 60 mel bins, b1-b6 72"
        raise ValueError(f"feat_dim={feat_dim} is not divisible by the product of the "
                         f"frequency strides ({strides}) of size {size!r} ({expected})")


def _parse_stages(stages: Sequence[Sequence[int | None]]) -> tuple[StageSpec, ...]:
    out = []
    for i, s in enumerate(stages):
        if len(s) != 4 or any(v is not None and (not isinstance(v, int) or v < 1) for v in s) \
                or any(v is None for v in s[:3]):
            raise ValueError(f"stages[{i}]={list(s)} is not [freq_stride, num_blocks, "
                             "channel_expansion, attention_reduction or null] (positive ints)")
        out.append((s[0], s[1], s[2], s[3]))
    if not out:
        raise ValueError("stages is empty")
    return tuple(out)


@MODELS.register("redimnet")
class ReDimNet(nn.Module):
    """ReDimNet frame level: features [B, T, F] -> [B, C*F, T] (``size`` picks a preset;
    ``channels`` (C), ``stages``, ``block``, ``group_divisor`` override it).

    >>> enc = ReDimNet(feat_dim=60, size="b0")
    >>> enc(torch.randn(2, 200, 60)).shape
    torch.Size([2, 600, 200])
    >>> tiny = ReDimNet(20, "b0", channels=2, stages=[[1, 1, 2, 5], [2, 1, 1, 5]])
    >>> tiny(torch.randn(1, 37, 20)).shape
    torch.Size([1, 40, 37])
    """

    def __init__(self, feat_dim: int, size: str = "b2", channels: int | None = None,
                 stages: Sequence[Sequence[int | None]] | None = None, block: str | None = None,
                 group_divisor: int | None = None, heads: int = 4) -> None:
        super().__init__()
        if size not in PRESETS:
            raise ValueError(f"size={size!r} is not one of {', '.join(PRESETS)}")
        mels, c, preset_block, preset_divisor, preset_stages = PRESETS[size]
        c = c if channels is None else channels
        block = preset_block if block is None else block
        divisor = preset_divisor if group_divisor is None else group_divisor
        specs = preset_stages if stages is None else _parse_stages(stages)
        if block not in BLOCKS:
            raise ValueError(f"block={block!r} is not one of {', '.join(BLOCKS)}")
        if c < 1 or divisor < 1 or heads < 1:
            raise ValueError("channels, group_divisor and heads must be positive")
        _check_freq(feat_dim, size, specs)
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), ChannelNorm(c))
        layers, f = [], feat_dim
        try:
            for i, spec in enumerate(specs):
                layers.append(ReDimStage(i, c, f, spec, block, divisor, heads))
                c, f = layers[-1].out_channels, layers[-1].out_freq
        except ValueError as exc:  # widths follow C*F: say when F is not the preset's
            if feat_dim == mels or stages is not None:
                raise
            raise ValueError(f"{exc} (size {size!r} expects {mels} mel bins, got "
                             f"feat_dim={feat_dim})") from None
        self.stages = nn.ModuleList(layers)
        self.out_channels = c * f  # = C * feat_dim
        self.mix = WeightedSum(len(layers) + 1, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [to_1d(self.stem(to_channels_first(x).unsqueeze(1)))]
        for stage in self.stages:
            outputs.append(stage(outputs))
        return self.mix(outputs)
