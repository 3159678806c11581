"""Decode audio (wav/flac/anything libsndfile reads) to float32 mono at a target rate."""

from __future__ import annotations

import io
import os
import re
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speakertune.data.errors import AudioError, StorageError
from speakertune.data.storage import get_filesystem, has_scheme, read_bytes, with_retries


def fit_length(x: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop (at a random offset when ``rng`` is given) or tile ``x`` to exactly ``length``."""
    if len(x) == 0:
        raise AudioError("fit_length: empty signal")
    if len(x) < length:
        x = np.tile(x, -(-length // len(x)))
    start = int(rng.integers(0, len(x) - length + 1)) if rng is not None else 0
    return x[start : start + length]


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased); a no-op when the rates match."""
    if orig_sr == target_sr:
        return x
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(x, int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


# libsndfile notes a WAV whose data chunk is shorter than its header declares in extra_info.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_STREAMED = (0, 0xFFFFFFFF)  # a streamed WAV leaves the size unknown: not a truncation


AV_SUFFIXES = (".m4a", ".aac", ".mp4", ".opus", ".webm")  # libsndfile can't: PyAV decodes
# What a listing of a corpus or noise/RIR folder takes as audio (.m4a: VoxCeleb2; .sph: NIST).
AUDIO_SUFFIXES = (".wav", ".flac", ".m4a", ".ogg", ".mp3", ".sph")


def _decode_av(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """AAC & co. through PyAV's bundled FFmpeg: ``(samples x channels float32, rate)``."""
    import av

    try:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.audio[0]
            chunks = [f.to_ndarray() for f in box.decode(stream)]
            sr = stream.codec_context.sample_rate
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None
    if not chunks:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    # planar frames are (channels, n); packed ones (1, n * channels)
    wave = np.concatenate(chunks, axis=1).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        wave /= float(np.iinfo(chunks[0].dtype).max)
    return wave.T, int(sr)


def decode_audio(data: bytes, sample_rate: int, name: str) -> np.ndarray:
    """Decode ``data`` to float32 mono resampled to ``sample_rate``; ``name`` is for errors."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    if str(name).lower().endswith(AV_SUFFIXES):
        wave, sr = _decode_av(data, name)
        return _mono(wave, sr, sample_rate, name)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            _check_complete(f.extra_info, name)
            wave, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except sf.LibsndfileError as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc.error_string})") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None
    return _mono(wave, sr, sample_rate, name)


def _mono(wave: np.ndarray, sr: int, sample_rate: int, name: str) -> np.ndarray:
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


def load_audio_crop(
    uri: str | Path, sample_rate: int, length: int, rng: np.random.Generator,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """``length`` samples of ``uri`` at ``sample_rate``: the crop that ``fit_length(load_audio(
    uri), length, rng)`` returns, with the same draw, but decoding only those samples.

    WAV/FLAC & co. at ``sample_rate`` and at least ``length`` long are seeked (an object-store
    file through a seekable pyarrow handle: ranged GETs); anything else (other rates, m4a,
    short files) is decoded whole. Raises ``AudioError`` like ``load_audio``.
    """
    name = str(uri)
    if not name.lower().endswith(AV_SUFFIXES):
        wave = _read_crop(uri, sample_rate, length, rng, storage_options)
        if wave is not None:
            return _mono(wave, sample_rate, sample_rate, name)
    return fit_length(load_audio(uri, sample_rate, storage_options), length, rng)


def _read_crop(uri, sample_rate: int, length: int, rng: np.random.Generator,
               storage_options: dict[str, Any] | None) -> np.ndarray | None:
    """Seek and read the crop (``None``: needs a full decode); ``rng`` draws only if it reads."""
    name = str(uri)
    try:
        fs, path = get_filesystem(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    local = not has_scheme(name)
    state = rng.bit_generator.state  # a retried read must draw the same offset

    def read() -> np.ndarray | None:
        rng.bit_generator.state = state
        with (open(path, "rb") if local else fs.open_input_file(path)) as raw:
            if (os.fstat(raw.fileno()).st_size if local else raw.size()) == 0:
                raise AudioError(f"{name}: empty file (0 bytes)")
            with sf.SoundFile(raw) as f:
                _check_complete(f.extra_info, name)
                if f.samplerate != sample_rate or f.frames < length:
                    return None
                f.seek(int(rng.integers(0, f.frames - length + 1)))
                return f.read(length, dtype="float32", always_2d=True)

    try:
        return with_retries(fs, name, "read", read)
    except FileNotFoundError:
        raise AudioError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not a file") from None
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    except sf.LibsndfileError as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc.error_string})") from None
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        if isinstance(exc, AudioError):
            raise
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None


def _check_complete(extra_info: str, name: str) -> None:
    short = _SHORT_DATA.search(extra_info)
    if short and int(short[1]) not in _STREAMED:
        raise AudioError(
            f"{name}: truncated (header declares {short[1]} bytes of samples, "
            f"file holds {short[2]})"
        )


def audio_info(uri: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[float, int]:
    """``(duration_s, sample_rate)`` from the header, without decoding the samples; missing,
    empty, corrupt, truncated and zero-length files raise ``AudioError`` naming ``uri`` once."""
    local = not has_scheme(str(uri))
    try:
        if local and not os.path.exists(uri):
            raise AudioError(f"{uri}: file not found")
        data = None if local else read_bytes(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    if (os.path.getsize(uri) if local else len(data)) == 0:
        raise AudioError(f"{uri}: empty file (0 bytes)")
    if str(uri).lower().endswith(AV_SUFFIXES):  # header only is unreliable for AAC: decode
        wave, sr = _decode_av(data if data is not None else Path(uri).read_bytes(), str(uri))
        return wave.shape[0] / sr, sr
    try:
        info = sf.info(str(uri) if local else io.BytesIO(data))
    except sf.LibsndfileError as exc:  # its str() repeats the path; error_string does not
        raise AudioError(f"{uri}: corrupt or unsupported audio ({exc.error_string})") from None
    except (RuntimeError, ValueError, OSError) as exc:
        raise AudioError(f"{uri}: corrupt or unsupported audio ({exc})") from None
    _check_complete(info.extra_info, str(uri))
    if info.frames <= 0:
        raise AudioError(f"{uri}: zero-length audio (no samples)")
    return info.frames / info.samplerate, int(info.samplerate)
