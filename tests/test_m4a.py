"""VoxCeleb2's AAC (.m4a) files decode without a system ffmpeg (PyAV's bundled FFmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from speakertune.data.audio import audio_info, load_audio
from speakertune.data.errors import AudioError
from speakertune.data.readers import read_voxceleb

av = pytest.importorskip("av")


def write_m4a(path: Path, x: np.ndarray, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as box:
        stream = box.add_stream("aac", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None, :], format="s16",
                                           layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return path


def test_m4a_decodes_to_the_tone_it_holds(tmp_path: Path) -> None:
    t = np.arange(32000) / 16000
    path = write_m4a(tmp_path / "tone.m4a", 0.5 * np.sin(2 * np.pi * 440 * t))
    dur, sr = audio_info(path)
    assert sr == 16000 and abs(dur - 2.0) < 0.2  # AAC adds priming/padding frames
    x = load_audio(path, 8000)  # resampled like any other file
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.argmax(spectrum) * 8000 / len(x) - 440) < 5
    assert 0.25 < np.sqrt(np.mean(x**2)) < 0.45  # a 0.5-amplitude sine has RMS 0.354


def test_voxceleb2_layout_with_m4a_and_a_broken_one(tmp_path: Path) -> None:
    root = tmp_path / "aac"
    rng = np.random.default_rng(0)
    for spk in ("id00012", "id00015"):
        write_m4a(root / spk / "21Uxsk56VDQ" / "00001.m4a", 0.1 * rng.standard_normal(24000))
    (root / "id00015" / "zzz" / "00002.m4a").parent.mkdir(parents=True)
    (root / "id00015" / "zzz" / "00002.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A junk")
    skipped: list[tuple[str, str]] = []
    df, _ = read_voxceleb(root, skipped=skipped)
    assert sorted(df["spk"]) == ["id00012", "id00015"] and (df["duration_s"] > 1.4).all()
    assert len(skipped) == 1 and "corrupt or unsupported" in skipped[0][1]
    with pytest.raises(AudioError, match=r"00002\.m4a: corrupt or unsupported"):
        read_voxceleb(root)
