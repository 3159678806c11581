"""Mixed precision (``trainer.amp``: off | fp16 | bf16) via ``torch.autocast``.

fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's range and
does not. On CPU only bf16 is honoured: CPU fp16 autocast is slow and gains nothing.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from speakertune.config import ConfigError

log = logging.getLogger(__name__)
AMP_MODES = ("off", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_amp(amp: str | None, device: torch.device) -> str:
    """The mode that will actually run on ``device`` (a warning says when it differs)."""
    mode = "off" if amp in (None, False, "none") else str(amp).lower()
    if mode not in AMP_MODES:
        raise ConfigError(f"trainer.amp: {amp!r} is not one of {', '.join(AMP_MODES)}")
    if mode == "fp16" and device.type != "cuda":
        log.warning("trainer.amp=fp16 needs a GPU; training in fp32 on %s", device.type)
        return "off"
    return mode


def autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[mode])


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler:
    """Enabled only for fp16; a disabled scaler is a no-op pass-through with the same API."""
    return torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))
