"""Decode audio (wav/flac/anything libsndfile reads) to float32 mono at a target rate."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable
from math import gcd
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speakertune.config import DEFAULTS
from speakertune.data.errors import AudioError, StorageError
from speakertune.data.storage import get_filesystem, has_scheme, read_bytes, with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")


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
# Rates a header may declare. Outside them the file is refused before anything is resampled:
# a crafted 2**31-1 Hz header would allocate hundreds of GiB, a 1 Hz one be upsampled 16,000x.
RATE_RANGE = (4000, 192000)
# Remote objects up to this size are fetched in one GET (a request's latency, not its bytes,
# is what an object store charges for small files); larger ones are read through a seekable
# handle (ranged GETs), so only the decoded window is held. A training crop reads a window of
# a few seconds: only a small file is worth fetching whole for it.
WHOLE_READ_BYTES = 64 << 20
WHOLE_READ_BYTES_CROP = 1 << 20
MAX_DECODE_SECONDS = float(DEFAULTS["data"]["max_decode_seconds"])


def decode_cap(cfg: dict[str, Any] | None) -> float:
    """The longest stretch of one file any whole-file path decodes (``data.max_decode_seconds``,
    which checkpoints from before it existed lack)."""
    return float(((cfg or {}).get("data") or {}).get("max_decode_seconds", MAX_DECODE_SECONDS))


def _check_rate(sr: int, name: str) -> None:
    lo, hi = RATE_RANGE
    if not lo <= sr <= hi:
        raise AudioError(f"{name}: the header declares {sr} Hz, outside {lo // 1000}-"
                         f"{hi // 1000} kHz (corrupt or not speech audio)")


def _check_header(f: sf.SoundFile, name: str) -> None:
    """What the header alone can tell: a truncated data chunk, a rate outside ``RATE_RANGE``."""
    _check_complete(f.extra_info, name)
    _check_rate(f.samplerate, name)


def _window(f: sf.SoundFile, max_seconds: float | None, keep: str, name: str) -> np.ndarray:
    """All of ``f``, or its centred (``keep="centre"``) or first ``max_seconds``: never more."""
    _check_header(f, name)
    cap = -1 if max_seconds is None else max(1, int(max_seconds * f.samplerate))
    if cap > 0 and f.frames > cap:
        start = (f.frames - cap) // 2 if keep == "centre" and f.seekable() else 0
        log.warning("%s: %.1f s long, over the %.0f s decode cap: using its %s %.0f s", name,
                    f.frames / f.samplerate, max_seconds, "centred" if start else "first",
                    max_seconds)
        f.seek(start)
    return f.read(cap, dtype="float32", always_2d=True)


def _decode_av(data: bytes, name: str, max_seconds: float | None = None
               ) -> tuple[np.ndarray, int]:
    """AAC & co. through PyAV's bundled FFmpeg: ``(samples x channels float32, rate)``, at
    most the first ``max_seconds`` decoded."""
    import av

    try:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.audio[0]
            sr = int(stream.codec_context.sample_rate)
            _check_rate(sr, name)
            cap = None if max_seconds is None else int(max_seconds * sr)
            chunks, got = [], 0
            for frame in box.decode(stream):
                chunks.append(frame.to_ndarray())
                got += frame.samples
                if cap is not None and got >= cap:
                    log.warning("%s: over the %.0f s decode cap: using its first %.0f s", name,
                                max_seconds, max_seconds)
                    break
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None
    if not chunks:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    # planar frames are (channels, n); packed ones (1, n * channels)
    wave = np.concatenate(chunks, axis=1).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        wave /= float(np.iinfo(chunks[0].dtype).max)
    return wave.T[: cap if cap is not None else None], sr


def _sound(source: Any, name: str, fn: Callable[[sf.SoundFile], T]) -> T:
    """``fn`` on ``source`` opened as a SoundFile; a bad file is one ``AudioError`` line."""
    try:
        with sf.SoundFile(source) as f:
            return fn(f)
    except sf.LibsndfileError as exc:  # its str() repeats the path; error_string does not
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc.error_string})") from None
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, AudioError):
            raise
        raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None


def _open_sound(uri: str | Path, storage_options: dict[str, Any] | None,
                fn: Callable[[sf.SoundFile], T], whole_below: int = WHOLE_READ_BYTES) -> T:
    """``fn`` on the file or object at ``uri``, read through a seekable handle (a small object:
    one GET), retried like any storage read; every failure is one ``AudioError`` line."""
    name = str(uri)
    try:
        fs, path = get_filesystem(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    local = not has_scheme(name)

    def read() -> T:
        with (open(path, "rb") if local else fs.open_input_file(path)) as raw:
            size = os.fstat(raw.fileno()).st_size if local else raw.size()
            if size == 0:
                raise AudioError(f"{name}: empty file (0 bytes)")
            small = not local and size <= whole_below
            return _sound(io.BytesIO(raw.read()) if small else raw, name, fn)

    try:
        return with_retries(fs, name, "read", read)
    except FileNotFoundError:
        raise AudioError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not a file") from None
    except StorageError as exc:
        raise AudioError(str(exc)) from None
    except OSError as exc:
        raise AudioError(f"{name}: cannot read ({exc})") from None


def _read_whole(uri: str | Path, storage_options: dict[str, Any] | None) -> bytes:
    """A file's bytes for the decoders that need them all (PyAV); errors as ``AudioError``."""
    try:
        return read_bytes(uri, storage_options)
    except StorageError as exc:
        raise AudioError(str(exc)) from None


def decode_audio(data: bytes, sample_rate: int, name: str,
                 max_seconds: float | None = MAX_DECODE_SECONDS) -> np.ndarray:
    """Decode ``data`` to float32 mono resampled to ``sample_rate``, at most its centred
    ``max_seconds`` (None: all); ``name`` is for errors."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    if str(name).lower().endswith(AV_SUFFIXES):
        return _mono(*_decode_av(data, name, max_seconds), sample_rate, name)
    wave, sr = _sound(io.BytesIO(data), name,
                      lambda f: (_window(f, max_seconds, "centre", name), f.samplerate))
    return _mono(wave, sr, sample_rate, name)


def _mono(wave: np.ndarray, sr: int, sample_rate: int, name: str) -> np.ndarray:
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(resample(mono, sr, sample_rate), dtype=np.float32)


def load_audio(
    uri: str | Path, sample_rate: int, storage_options: dict[str, Any] | None = None, *,
    max_seconds: float | None = MAX_DECODE_SECONDS, keep: str = "centre",
) -> np.ndarray:
    """Read and decode one file (local or any pyarrow URI): float32 mono at ``sample_rate``.
    A file longer than ``max_seconds`` is decoded in its centred (``keep="first"``: first)
    ``max_seconds`` only, with a warning (m4a & co.: always the first). Raises ``AudioError``."""
    name = str(uri)
    if name.lower().endswith(AV_SUFFIXES):
        return decode_audio(_read_whole(uri, storage_options), sample_rate, name, max_seconds)
    wave, sr = _open_sound(uri, storage_options,
                           lambda f: (_window(f, max_seconds, keep, name), f.samplerate))
    return _mono(wave, sr, sample_rate, name)


def load_audio_crop(
    uri: str | Path, sample_rate: int, length: int, rng: np.random.Generator,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """``length`` samples of ``uri`` at ``sample_rate``: for a file at that rate, the crop that
    ``fit_length(load_audio(uri), length, rng)`` returns, with the same draw, but decoding only
    those samples (an object-store file through a seekable handle: ranged GETs).

    A file at another rate is read as the window that resamples to ``length`` samples; m4a &
    co. and files shorter than the crop are decoded whole (at most the decode cap). Raises
    ``AudioError`` like ``load_audio``.
    """
    name = str(uri)
    if not name.lower().endswith(AV_SUFFIXES):
        state = rng.bit_generator.state  # a retried read must draw the same offset

        def crop(f: sf.SoundFile) -> tuple[np.ndarray, int] | None:
            rng.bit_generator.state = state
            _check_header(f, name)
            need = length if f.samplerate == sample_rate else \
                -(-length * f.samplerate // sample_rate) + 1
            if f.frames < need:
                return None
            f.seek(int(rng.integers(0, f.frames - need + 1)))
            return f.read(need, dtype="float32", always_2d=True), f.samplerate

        got = _open_sound(uri, storage_options, crop, WHOLE_READ_BYTES_CROP)
        if got is not None:
            return fit_length(_mono(*got, sample_rate, name), length)
    return fit_length(load_audio(uri, sample_rate, storage_options), length, rng)


def _check_complete(extra_info: str, name: str) -> None:
    short = _SHORT_DATA.search(extra_info)
    if short and int(short[1]) not in _STREAMED:
        raise AudioError(
            f"{name}: truncated (header declares {short[1]} bytes of samples, "
            f"file holds {short[2]})"
        )


def audio_info(uri: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[float, int]:
    """``(duration_s, sample_rate)`` from the header, without decoding the samples; missing,
    empty, corrupt, truncated, zero-length and out-of-range-rate files raise ``AudioError``
    naming ``uri`` once."""
    name = str(uri)
    if name.lower().endswith(AV_SUFFIXES):  # header only is unreliable for AAC: decode
        data = _read_whole(uri, storage_options)
        if not data:
            raise AudioError(f"{name}: empty file (0 bytes)")
        wave, sr = _decode_av(data, name)
        return wave.shape[0] / sr, sr

    def info(f: sf.SoundFile) -> tuple[float, int]:
        _check_header(f, name)
        if f.frames <= 0:
            raise AudioError(f"{name}: zero-length audio (no samples)")
        return f.frames / f.samplerate, int(f.samplerate)

    return _open_sound(uri, storage_options, info)
