"""A folder of crafted bad inputs (issue 26): each is small on disk and aims at one way a
decoder, a reader or a writer can be made to fail badly (exhaust memory, hang, crash with a
traceback, or write what it should not)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _wav_with_rate(path: Path, rate: int, samples: int = 32000) -> Path:
    """A valid 16-bit PCM WAV whose header then claims ``rate`` Hz."""
    sf.write(path, np.zeros(samples, np.int16), SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[24:28] = struct.pack("<I", rate)
    raw[28:32] = struct.pack("<I", min(rate * 2, 2**32 - 1))
    path.write_bytes(bytes(raw))
    return path


def _silence_flac(path: Path, seconds: int) -> Path:
    """``seconds`` of digital silence as FLAC: a few hundred KB on disk, 4 bytes a sample
    decoded (one hour: 230 MB of float32 at 16 kHz)."""
    block = np.zeros(SR * 60, np.int16)
    with sf.SoundFile(path, "w", SR, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(block)
    return path


def build(folder: Path, speech: Path) -> dict[str, Path]:
    """Write the crafted inputs under ``folder``; ``speech`` is a good file to cut from.
    Returns name -> path; every name is one kind of bad input."""
    folder.mkdir(parents=True, exist_ok=True)
    good = speech.read_bytes()
    out = {
        "rate_2g": _wav_with_rate(folder / "rate_2g.wav", 2**31 - 1),
        "rate_1mhz": _wav_with_rate(folder / "rate_1mhz.wav", 999_983),
        "rate_1hz": _wav_with_rate(folder / "rate_1hz.wav", 1, samples=2),
        "silence_1h": _silence_flac(folder / "silence_1h.flac", 3600),
        "zero_bytes": folder / "zero_bytes.wav",
        "garbage_wav": folder / "garbage_wav.wav",
        "garbage_m4a": folder / "garbage_m4a.m4a",
        "truncated_flac": folder / "truncated_flac.flac",
    }
    out["zero_bytes"].write_bytes(b"")
    rng = np.random.default_rng(0)
    out["garbage_wav"].write_bytes(b"RIFF" + rng.bytes(4000))
    out["garbage_m4a"].write_bytes(rng.bytes(4000))
    out["truncated_flac"].write_bytes(good[: len(good) // 3] if speech.suffix == ".flac"
                                      else b"fLaC" + good[44:2000])
    # a WAV whose data chunk declares 4 GB but holds 2 s
    huge = _wav_with_rate(folder / "huge_declared.wav", SR)
    raw = bytearray(huge.read_bytes())
    raw[40:44] = struct.pack("<I", 0xFFFFFFF0)
    huge.write_bytes(bytes(raw))
    out["huge_declared"] = huge
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        x = np.zeros(SR, np.float32)
        x[100] = value
        sf.write(folder / f"{name}.wav", x, SR, subtype="FLOAT")
        out[name] = folder / f"{name}.wav"
    return out
