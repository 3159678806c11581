"""ONNX export of a speaker encoder, and an ``nn.Module`` that runs the file in onnxruntime.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter, at opset
``OPSET``. It is the one that handles the registry's convolutional encoders reliably with a
dynamic time axis (``dynamic_axes``), and it exports in 1-3 s where the default dynamo exporter
of torch 2.11 took 40-60 s per model on the 2-core build box. The graph is
``feats [batch, frames, feat_dim] -> embedding [batch, embed_dim]``; both axes named
``batch``/``frames`` are dynamic.

Example::

    save_onnx(encoder, 80, Path("encoder.onnx"))           # encoder: SpeakerEncoder
    OnnxEncoder(Path("encoder.onnx"))(torch.randn(2, 300, 80)).shape  # torch.Size([2, 192])
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

OPSET = 17
INPUT, OUTPUT = "feats", "embedding"
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"


def save_onnx(encoder: torch.nn.Module, feat_dim: int, path: Path, example_frames: int = 200
              ) -> dict[str, Any]:
    """Write ``encoder`` (in eval mode) to ``path``; returns what the report records."""
    example = torch.zeros(1, example_frames, feat_dim)
    example.normal_(generator=torch.Generator().manual_seed(0))
    # The exporter prints the whole TorchScript graph to stdout when an operator is
    # unsupported; the exception's first line is the message the caller needs.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder.eval(), (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", 1: "frames"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
    return {"exporter": EXPORTER, "opset": OPSET, "input": INPUT, "output": OUTPUT}


class OnnxEncoder(torch.nn.Module):
    """An exported encoder run by onnxruntime, callable like the PyTorch one, so that
    ``scoring.embed`` (the one embedding path) can embed with it: ``[B, T, F] -> [B, D]``."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(feats.detach().cpu().numpy(), dtype=np.float32)
        (emb,) = self.session.run([OUTPUT], {INPUT: x})
        return torch.from_numpy(emb).to(feats.device)


def load_onnx(path: Path) -> torch.nn.Module:
    return OnnxEncoder(path)
