"""Audio decoding: formats, channel mixing, resampling, and every bad-audio case."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from speakertune.data.audio import decode_audio, load_audio
from speakertune.data.errors import AudioError


def _tone(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("WAV", "FLOAT")])
def test_resampled_read_matches_torchaudio(tmp_path, fmt, subtype):
    x = _tone(440.0, 44100)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, x, 44100, format=fmt, subtype=subtype)
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == 16000
    # Independent reference: torchaudio's resampler on the same decoded samples.
    ref = AF.resample(torch.from_numpy(sf.read(path, dtype="float32")[0]), 44100, 16000).numpy()
    core = slice(200, -200)  # the two filters differ only near the edges
    assert np.max(np.abs(y[core] - ref[core])) < 1e-2
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 440.0) <= 1.0


def test_stereo_is_mono_mixed(tmp_path):
    left, right = _tone(300.0, 16000), _tone(1000.0, 16000)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    y = load_audio(tmp_path / "st.wav", 16000)
    np.testing.assert_allclose(y, (left + right) / 2, atol=2e-4)  # PCM_16 quantisation


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav", 16000)


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        load_audio(tmp_path / "empty.wav", 16000)


def test_zero_length_audio(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"zero\.wav: zero-length audio"):
        load_audio(tmp_path / "zero.wav", 16000)


def test_corrupt_and_unsupported(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(200.0, 16000), 16000)
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[:30])  # header cut short
    (tmp_path / "text.wav").write_bytes(b"this is not audio at all\n" * 20)
    for name in ("trunc.wav", "text.wav"):
        with pytest.raises(AudioError, match=rf"{name}: corrupt or unsupported audio") as info:
            load_audio(tmp_path / name, 16000)
        assert "\n" not in str(info.value)
    with pytest.raises(AudioError, match=r"^mem: corrupt"):
        decode_audio(b"\x00\x01garbage", 16000, "mem")
