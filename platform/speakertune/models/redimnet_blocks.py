"""Building blocks of ReDimNet (``models/redimnet.py``): the 2-D blocks that run on the
[B, C, F, T] view, the 1-D time-context block that runs on the [B, C*F, T] view, and the
(freq, channel) reshapes between the two views.

Everything keeps the time resolution, so the outputs of all stages can be summed frame by
frame.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def to_1d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, T] -> [B, F*C, T], frequency-major as the original (index f*C + c)."""
    return x.transpose(1, 2).flatten(1, 2)


def to_2d(x: torch.Tensor, channels: int, freq: int) -> torch.Tensor:
    """Inverse of ``to_1d``: [B, F*C, T] -> [B, C, F, T]."""
    return x.unflatten(1, (freq, channels)).transpose(1, 2)


class ChannelNorm(nn.Module):
    """LayerNorm over dim 1 of [B, C, ...] (ConvNeXt's "channels first" LayerNorm)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # explicit non-negative permutations: movedim(1, -1) exports a perm with -1, which
        # onnxruntime rejects
        last = x.dim() - 1
        y = x.permute(0, *range(2, last + 1), 1)
        y = F.layer_norm(y, self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, last, *range(1, last))


class ConvNeXtBlock(nn.Module):
    """``x + pw(GELU(BN(dw(x))))``: a grouped k (x k) convolution, BatchNorm, GELU and a
    pointwise convolution with a residual path; ``dims`` 1 ([B, C, T]) or 2 ([B, C, F, T])."""

    def __init__(self, channels: int, kernel: int, groups: int, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.body = nn.Sequential(
            conv(channels, channels, kernel, padding=kernel // 2, groups=groups),
            norm(channels), nn.GELU(), conv(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FreqSE(nn.Module):
    """Frequency-wise squeeze-excitation: each frequency bin of [B, C, F, T] is scaled by
    sigmoid(MLP(its mean over channels and time))."""

    def __init__(self, freq: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, freq), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mlp(x.mean(dim=(1, 3)))[:, None, :, None]


def _grouped_conv3x3(channels: int, groups: int) -> nn.Sequential:
    """A grouped 3x3 convolution (no bias) followed by a pointwise one: the original's
    cheap stand-in for a dense 3x3 when the group divisor is above 1."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False),
                         nn.Conv2d(channels, channels, 1))


class ResBlock(nn.Module):
    """Basic residual block: conv-ReLU-BN, conv-BN, optional frequency-wise SE, + x, ReLU.

    ReLU before the first BatchNorm is the published order. ``freq`` (the block's frequency
    bins) turns on the SE, whose hidden width is ``min(64, max(channels, 32))`` as published.
    """

    def __init__(self, channels: int, groups: int, freq: int | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _grouped_conv3x3(channels, groups), nn.ReLU(inplace=True), nn.BatchNorm2d(channels),
            _grouped_conv3x3(channels, groups), nn.BatchNorm2d(channels))
        self.se = FreqSE(freq, min(64, max(channels, 32))) if freq else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.se(self.body(x)))


class TransformerLayer(nn.Module):
    """Post-norm self-attention layer on [B, C, T]: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``.

    The attention is ``scaled_dot_product_attention``, which torch's flop counter sees (so
    ``count_macs`` includes the T^2 products) and the TorchScript ONNX exporter handles. The
    FFN uses tanh-approximated GELU, as the published layer.
    """

    def __init__(self, width: int, heads: int, ffn: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn, width))
        self.norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)  # [B, T, C]
        width = h.shape[-1]
        # [B, T, 3C] -> three [B, heads, T, C/heads]
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, width // self.heads)).permute(
            2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)
        h = self.norm1(h + self.out(att.transpose(1, 2).flatten(2)))
        h = self.norm2(h + self.ffn(h))
        return h.transpose(1, 2)


class TimeContext(nn.Module):
    """The 1-D block after a stage: reduce [B, D, T] to ``width`` channels (1x1 + LayerNorm),
    four depthwise ConvNeXt-like blocks of growing kernel (7, 19, 31, 59 frames), one
    transformer layer (FFN width = ``width``), expand back; residual.

    Convolutions give local context cheaply, the attention the whole utterance.
    """

    KERNELS = (7, 19, 31, 59)

    def __init__(self, channels: int, width: int, heads: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, width, 1), ChannelNorm(width),
            *[ConvNeXtBlock(width, k, width, dims=1) for k in self.KERNELS],
            TransformerLayer(width, heads, width), nn.Conv1d(width, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class WeightedSum(nn.Module):
    """Softmax-weighted sum of ``n`` tensors [B, D, T], with one learned weight per input and
    channel (zeros at start: the plain mean). It is how every stage sees all earlier outputs."""

    def __init__(self, n: int, channels: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n, channels, 1))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.logits, dim=0)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):  # a running sum: no [n, B, D, T] stack in memory
            out = out + xs[i] * w[i]
        return out
