"""Waveform preprocessing: resampling, band-pass filtering, VAD trimming, NLMS noise cancelling.

All functions take and return float32 mono numpy arrays. ``Preprocessor`` applies the ones that
the ``preprocess`` section of a trial config switches on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from scipy import signal


class PreprocessError(ValueError):
    """A preprocessing option is invalid; the message names the config field."""


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling via torchaudio."""
    if orig_sr == new_sr:
        return np.asarray(x, dtype=np.float32)
    y = AF.resample(torch.as_tensor(np.asarray(x, dtype=np.float32)), int(orig_sr), int(new_sr))
    return y.numpy()


def bandpass(x: np.ndarray, sr: int, low: float, high: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass (forward-backward, so the order doubles in effect)."""
    nyq = sr / 2
    if not 0 < low < high < nyq:
        raise PreprocessError(
            f"preprocess.bandpass: need 0 < low ({low}) < high ({high}) < Nyquist ({nyq})"
        )
    # Second-order sections stay numerically stable at high orders and low cut-offs.
    sos = signal.butter(int(order), [low, high], btype="bandpass", fs=sr, output="sos")
    # sosfiltfilt needs a signal longer than its padding; shorter ones are filtered unpadded.
    padlen = min(3 * (2 * len(sos) + 1), max(len(x) - 1, 0))
    return signal.sosfiltfilt(sos, x, padlen=padlen).astype(np.float32)


def frame_energy_db(x: np.ndarray, sr: int, frame_ms: float = 25.0, shift_ms: float = 10.0):
    """Per-frame energy in dB and the frame hop in samples."""
    win, hop = int(sr * frame_ms / 1000), int(sr * shift_ms / 1000)
    if len(x) < win:
        return np.array([10 * np.log10(np.mean(x**2) + 1e-12)]), hop
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12), hop


def vad_trim(
    x: np.ndarray, sr: int, threshold_db: float = -40.0, frame_ms: float = 25.0,
    shift_ms: float = 10.0, margin_ms: float = 50.0,
) -> np.ndarray:
    """Trim leading/trailing frames quieter than ``threshold_db`` below the loudest frame.

    Only the edges are trimmed (pauses inside speech are kept) so the signal stays continuous.
    A signal with no frame above the threshold is returned unchanged rather than emptied.
    """
    energy, hop = frame_energy_db(x, sr, frame_ms, shift_ms)
    active = np.flatnonzero(energy > energy.max() + threshold_db)
    if len(active) == 0:
        return np.asarray(x, dtype=np.float32)
    margin = int(sr * margin_ms / 1000)
    start = max(active[0] * hop - margin, 0)
    stop = min(active[-1] * hop + int(sr * frame_ms / 1000) + margin, len(x))
    return np.asarray(x[start:stop], dtype=np.float32)


def nlms_filter(
    primary: np.ndarray, reference: np.ndarray, taps: int = 32, mu: float = 0.05, eps: float = 1e-6
) -> np.ndarray:
    """Normalised LMS adaptive noise cancelling.

    ``reference`` carries noise correlated with the noise in ``primary`` (e.g. a second mic);
    the filter learns the path reference -> primary and returns the error signal, which is the
    primary with the predictable noise removed. ``0 < mu < 2`` for stability.
    """
    d = np.asarray(primary, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if d.shape != r.shape or d.ndim != 1:
        raise PreprocessError(
            f"nlms_filter: primary {d.shape} and reference {r.shape} must be equal-length 1-D"
        )
    if not 0 < mu < 2:
        raise PreprocessError(f"nlms_filter: mu={mu} outside the stable range (0, 2)")
    w = np.zeros(taps)
    # x_buf[n] is the tap-delay line [r[n], r[n-1], ..., r[n-taps+1]] (zeros before the start).
    padded = np.concatenate([np.zeros(taps - 1), r])
    x_buf = np.lib.stride_tricks.sliding_window_view(padded, taps)[:, ::-1]
    out = np.empty_like(d)
    for n in range(len(d)):  # inherently sequential: each step uses the updated weights
        xn = x_buf[n]
        e = d[n] - w @ xn
        w += (mu / (eps + xn @ xn)) * e * xn
        out[n] = e
    return out.astype(np.float32)


class Preprocessor:
    """Applies the preprocessing steps enabled in ``cfg["preprocess"]`` (or that section)."""

    def __init__(self, cfg: dict[str, Any] | None, sample_rate: int) -> None:
        cfg = dict(cfg or {})
        if "preprocess" in cfg:
            cfg = dict(cfg["preprocess"] or {})
        self.sr = sample_rate
        self.bandpass = self._bandpass_args(cfg.get("bandpass"))
        vad = cfg.get("vad", False)
        self.vad = dict(vad) if isinstance(vad, dict) else ({} if vad else None)

    def _bandpass_args(self, bp: Any) -> dict[str, float] | None:
        if not bp:
            return None
        if isinstance(bp, (list, tuple)) and len(bp) in (2, 3):
            bp = dict(zip(("low", "high", "order"), bp))
        if not isinstance(bp, dict) or not {"low", "high"} <= set(bp):
            raise PreprocessError(
                f"preprocess.bandpass: expected {{low, high[, order]}} or [low, high], got {bp!r}"
            )
        args = {"low": float(bp["low"]), "high": float(bp["high"]),
                "order": int(bp.get("order", 4))}
        bandpass(np.zeros(64, np.float32), self.sr, **args)  # validate now, not in a worker
        return args

    @property
    def active(self) -> bool:
        return self.bandpass is not None or self.vad is not None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.vad is not None:
            x = vad_trim(x, self.sr, **self.vad)
        if self.bandpass is not None:
            x = bandpass(x, self.sr, **self.bandpass)
        return x
