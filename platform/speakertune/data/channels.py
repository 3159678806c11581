"""Recording channels for the built-in corpus: each session of a speaker is heard through its own
room, microphone and background, as every video of a VoxCeleb speaker is.

A channel is drawn from ``rng`` (so it is reproducible per session) and applied to the clean
speech of every utterance of that session: reverberation by one of the corpus's channel rooms
(or none: a close-talking microphone), additive noise at a drawn SNR, then the microphone's
band-limiting and spectral tilt. Rooms are shared between speakers, so a room identifies nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, firwin2, lfilter, sosfilt

NOISE_KINDS = ("white", "pink", "brown", "music")
EQ_BANDS_HZ = (125.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 4500.0, 6500.0)


@dataclass(frozen=True)
class Channel:
    room: int | None  # index into the channel rooms; None = close-talking, no reverberation
    noise: str  # one of NOISE_KINDS
    snr_db: float
    low_hz: float  # microphone band: high-pass corner
    high_hz: float  # low-pass corner
    tilt: float  # first-order spectral tilt (pre-emphasis > 0 brightens, < 0 darkens)
    eq_db: tuple[float, ...]  # the microphone's uneven response: gains of octave-ish bands
    gain: float

    def describe(self) -> str:
        room = "close" if self.room is None else f"room{self.room:02d}"
        return (f"{room} {self.noise}@{self.snr_db:.0f}dB band {self.low_hz:.0f}-"
                f"{self.high_hz:.0f}Hz tilt {self.tilt:+.2f}")


def draw_channel(rng: np.random.Generator, rooms: int) -> Channel:
    """A random session channel; ``rooms`` channel rooms exist to choose from."""
    return Channel(
        room=None if rng.random() < 0.1 or rooms == 0 else int(rng.integers(rooms)),
        noise=str(rng.choice(NOISE_KINDS)),
        snr_db=float(rng.uniform(-2.0, 10.0)),
        low_hz=float(np.exp(rng.uniform(np.log(60.0), np.log(800.0)))),
        high_hz=float(rng.uniform(2200.0, 7600.0)),
        tilt=float(rng.uniform(-0.9, 0.9)),
        eq_db=tuple(float(g) for g in rng.normal(0.0, 7.0, len(EQ_BANDS_HZ))),
        gain=float(rng.uniform(0.3, 0.9)),
    )


def apply_channel(
    x: np.ndarray,
    ch: Channel,
    rir: np.ndarray | None,
    noise: np.ndarray,
    sample_rate: int,
) -> np.ndarray:
    """Clean speech ``x`` (float, 1-D) as recorded through ``ch``; ``rir`` is the channel's room
    response (ignored for close-talking), ``noise`` at least ``len(x)`` samples, unit RMS.

    >>> rng = np.random.default_rng(0)
    >>> ch = draw_channel(rng, rooms=0)
    >>> apply_channel(rng.standard_normal(16000), ch, None, rng.standard_normal(16000),
    ...               16000).shape
    (16000,)
    """
    y = x.astype(np.float64)
    if ch.room is not None and rir is not None:
        y = fftconvolve(y, rir)[: len(y)]
    speech_rms = np.sqrt(np.mean(y**2)) + 1e-12
    y = y + noise[: len(y)] * speech_rms / 10 ** (ch.snr_db / 20)
    nyq = sample_rate / 2
    sos = butter(2, [ch.low_hz / nyq, min(ch.high_hz, 0.95 * nyq) / nyq], "bandpass", output="sos")
    y = lfilter([1.0, -ch.tilt], [1.0], sosfilt(sos, y))
    freqs = np.concatenate([[0.0], EQ_BANDS_HZ, [nyq]]) / nyq
    gains = 10 ** (np.concatenate([[ch.eq_db[0]], ch.eq_db, [ch.eq_db[-1]]]) / 20)
    y = fftconvolve(y, firwin2(257, freqs, gains), mode="same")
    return (y / (np.abs(y).max() + 1e-9) * ch.gain).astype(np.float32)
