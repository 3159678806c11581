"""TorchScript export of a speaker encoder (``torch.jit.trace``) and its loader.

Tracing records the operations of one forward pass on a ``[1, 200, feat_dim]`` example; the
registry's encoders have no length-dependent Python control flow, so the traced graph runs any
number of frames. That is not taken on trust: the parity check runs the saved file on
utterances of several lengths against the PyTorch encoder. ``torch.jit`` is deprecated in
torch 2.11 (its warnings are silenced here) but still the format LibTorch (C++) loads.

Example::

    save_torchscript(encoder, 80, Path("encoder.torchscript.pt"))
    load_torchscript(Path("encoder.torchscript.pt"))(torch.randn(2, 300, 80)).shape  # [2, 192]
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

EXPORTER = "torch.jit.trace"


def save_torchscript(encoder: torch.nn.Module, feat_dim: int, path: Path,
                     example_frames: int = 200) -> dict[str, Any]:
    """Trace ``encoder`` (in eval mode) and save it to ``path``; returns what the report records."""
    example = torch.zeros(1, example_frames, feat_dim)
    example.normal_(generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings, checked by parity
        traced = torch.jit.trace(encoder.eval(), (example,), check_trace=False)
        traced.save(str(path))
    return {"exporter": EXPORTER, "opset": None, "input": "feats [batch, frames, feat_dim]",
            "output": "embedding [batch, embed_dim]"}


def load_torchscript(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()
