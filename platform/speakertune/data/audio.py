"""Decode audio (wav/flac/anything libsndfile reads) to float32 mono at a target rate."""

from __future__ import annotations

import io
import re
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speakertune.data.errors import AudioError, StorageError
from speakertune.data.storage import read_bytes


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased); a no-op when the rates match."""
    if orig_sr == target_sr:
        return x
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(x, int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


# libsndfile notes a WAV whose data chunk is shorter than its header declares in extra_info.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_STREAMED = (0, 0xFFFFFFFF)  # a streamed WAV leaves the size unknown: not a truncation


def decode_audio(data: bytes, sample_rate: int, name: str) -> np.ndarray:
    """Decode ``data`` to float32 mono resampled to ``sample_rate``; ``name`` is for errors."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            short = _SHORT_DATA.search(f.extra_info)
            if short and int(short[1]) not in _STREAMED:
                raise AudioError(
                    f"{name}: truncated (header declares {short[1]} bytes of samples, "
                    f"file holds {short[2]})"
                )
            wave, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except sf.LibsndfileError as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc.error_string})") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(resample(mono, sr, sample_rate), dtype=np.float32)


def load_audio(
    uri: str | Path, sample_rate: int, storage_options: dict[str, Any] | None = None
) -> np.ndarray:
    """Read and decode one file (local or any pyarrow URI). Raises ``AudioError``."""
    try:
        data = read_bytes(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    return decode_audio(data, sample_rate, str(uri))


def audio_info(uri: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[float, int]:
    """``(duration_s, sample_rate)`` from the header, without decoding the samples."""
    try:
        data = read_bytes(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    if not data:
        raise AudioError(f"{uri}: empty file (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{uri}: corrupt or unsupported audio ({exc})") from None
    if info.frames <= 0:
        raise AudioError(f"{uri}: zero-length audio (no samples)")
    return info.frames / info.samplerate, int(info.samplerate)
