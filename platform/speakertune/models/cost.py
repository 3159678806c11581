"""What an encoder costs to run: trainable parameters and multiply-accumulates (MACs).

MACs are counted, not estimated: ``torch.utils.flop_counter`` records every matrix product and
convolution of one forward pass (a MAC is two FLOPs). Normalisation and activations are not
counted, so figures sit 1-2% below counters that add them (``thop``: ERes2NetV2 12.69 G for 300
frames, 12.50 G here). The pass runs on a copy on the ``meta`` device: shapes only, no
arithmetic and no memory, so a ResNet293 is counted in milliseconds.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MACS_SECONDS = 2.0  # the input length the ``macs`` objective is defined on


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(encoder: nn.Module, frames: int) -> int:
    """MACs of one forward pass of ``encoder`` on features [1, ``frames``, feat_dim].

    >>> from speakertune.models import build_encoder
    >>> count_macs(build_encoder("tdnn", "stats", 24, 16), 100) > 0
    True
    """
    feat_dim = int(encoder.feat_dim)
    try:
        model, x = copy.deepcopy(encoder).to("meta"), torch.empty(1, frames, feat_dim,
                                                                   device="meta")
        return _macs(model.eval(), x)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel (LSTMs)
        model = copy.deepcopy(encoder).cpu().eval()
        return _macs(model, torch.zeros(1, frames, feat_dim))


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops() // 2)


def encoder_cost(encoder: nn.Module, frames: int) -> dict[str, int]:
    """``{"num_params": ..., "macs": ...}``: what a trial reports (``macs`` for ``frames``)."""
    return {"num_params": count_parameters(encoder), "macs": count_macs(encoder, frames)}
