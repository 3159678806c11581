"""Model export with parity: ONNX / TorchScript files of a checkpoint's encoder, each checked
against the PyTorch encoder (embeddings at several lengths, dev EER) before it is kept.

Modules: ``onnx_model`` and ``torchscript_model`` (write and load one format), ``frontend_spec``
(``frontend.json``), ``parity`` (the checks), ``report`` (``parity.json``/``.md``), ``bundle``
(``export_checkpoint``: all of it for one checkpoint).
"""

from speakertune.export.bundle import FORMATS, ExportError, ExportResult, export_checkpoint
from speakertune.export.parity import ParityError

__all__ = ["FORMATS", "ExportError", "ExportResult", "ParityError", "export_checkpoint"]
