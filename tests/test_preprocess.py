"""Preprocessing on real synthetic speech and tones, checked against SciPy / closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal
from speakertune.frontend.preprocess import (
    PreprocessError,
    Preprocessor,
    bandpass,
    nlms_filter,
    resample,
    vad_trim,
)

SR = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Clean espeak speech (the corpus's utterances carry channel noise throughout)."""
    from speakertune.data.synthetic import speaker_profile, synth_utterance

    wave = synth_utterance(speaker_profile(1, 0), np.random.default_rng([0, 2, 1, 0]))
    return wave[: 2 * SR]


def tone(freq: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def db(p: float) -> float:
    return 10 * np.log10(p)


def test_bandpass_attenuates_out_of_band_tones_and_matches_the_design_response():
    low, high, order = 300.0, 3400.0, 4
    sos = signal.butter(order, [low, high], btype="bandpass", fs=SR, output="sos")
    for freq in (60.0, 7000.0, 1000.0):
        x = tone(freq)
        y = bandpass(x, SR, low, high, order)
        mid = slice(SR // 4, 3 * SR // 4)  # away from the edges
        gain_db = db(np.mean(y[mid] ** 2) / np.mean(x[mid] ** 2))
        # Forward-backward filtering squares the magnitude response: |H(f)|^2 in dB.
        _, h = signal.sosfreqz(sos, worN=[freq], fs=SR)
        expected_db = 2 * 20 * np.log10(abs(h[0]))
        assert gain_db == pytest.approx(expected_db, abs=0.5)
        if freq == 1000.0:
            assert abs(gain_db) < 0.5
            assert np.max(np.abs(y[mid] - x[mid])) < 0.02  # zero phase: no delay in band
        else:
            assert gain_db < -30.0


def test_vad_trim_removes_leading_and_trailing_silence_only(speech):
    rng = np.random.default_rng(0)
    quiet = (1e-4 * rng.standard_normal(SR // 2)).astype(np.float32)
    padded = np.concatenate([quiet, speech, quiet])
    out = vad_trim(padded, SR, threshold_db=-40.0, margin_ms=50.0)
    # 50 ms margins on both sides, each rounded out to a whole 25 ms (400-sample) frame
    assert len(speech) - SR // 10 <= len(out) <= len(speech) + SR // 10 + 2 * 400
    # The kept part is a contiguous slice of the input (nothing inside is removed).
    start = int(np.argmax(np.abs(padded - out[0]) < 1e-9))
    assert np.array_equal(padded[start : start + len(out)], out)
    assert np.array_equal(vad_trim(quiet * 0, SR), quiet * 0)  # all silence: unchanged


def test_resample_keeps_the_tone_and_agrees_with_polyphase():
    x = tone(440.0, sr=8000)
    y = resample(x, 8000, SR)
    assert len(y) == 2 * len(x)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(spectrum)] == pytest.approx(440.0, abs=1.0)
    ref = signal.resample_poly(x, 2, 1)
    mid = slice(1000, -1000)
    assert np.corrcoef(y[mid], ref[mid])[0, 1] > 0.999


def test_nlms_cancels_noise_from_a_reference_channel(speech):
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(len(speech)).astype(np.float32) * 0.1
    path = rng.standard_normal(8) * np.exp(-np.arange(8) / 2)  # unknown acoustic path
    noise = signal.lfilter(path, [1.0], reference).astype(np.float32)
    primary = speech + noise
    # A small step size: the speech itself disturbs adaptation (misadjustment ~ mu/(2-mu)).
    cleaned = nlms_filter(primary, reference, taps=16, mu=0.01)
    late = slice(len(speech) // 2, None)  # after convergence
    before = db(np.mean(noise[late] ** 2))
    after = db(np.mean((cleaned[late] - speech[late]) ** 2))
    assert after < before - 15.0
    # ...and speech survives: the cleaned signal is far closer to it than the noisy input.
    assert np.mean((cleaned[late] - speech[late]) ** 2) < 0.1 * np.mean(noise[late] ** 2)


def test_preprocessor_applies_the_config_and_rejects_bad_fields(speech):
    pre = Preprocessor({"preprocess": {"bandpass": [100, 4000], "vad": False}}, SR)
    assert np.allclose(pre(speech), bandpass(speech, SR, 100, 4000, 4))
    assert not Preprocessor({"bandpass": None, "vad": False}, SR).active
    with pytest.raises(PreprocessError, match=r"preprocess\.bandpass.*Nyquist \(8000"):
        Preprocessor({"bandpass": {"low": 100, "high": 9000}}, SR)
    with pytest.raises(PreprocessError, match="mu=3"):
        nlms_filter(speech, speech, mu=3)
