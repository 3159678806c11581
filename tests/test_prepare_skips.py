"""Preparing a real corpus finishes: bad files are skipped, counted and listed (Kaldi-style),
or, strictly, the first one stops it with its path named once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from speakertune.data.errors import AudioError
from speakertune.data.readers import read_kaldi, read_voxceleb, write_corpus


def _wav(path: Path, seconds: float, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16")
    return path


def _corpus_with_bad_files(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "wav"
    for spk in ("id1", "id2", "id3"):
        for vid in ("v1", "v2"):
            for n in (1, 2):
                _wav(root / spk / vid / f"{n:05d}.wav", 1.0, seed=hash((spk, vid, n)) % 1000)
    (root / "id1" / "v1" / "00003.wav").write_bytes(b"RIFF....not audio at all")  # corrupt
    (root / "id2" / "v2" / "00003.wav").write_bytes(b"")  # empty
    good = (root / "id3" / "v1" / "00001.wav").read_bytes()
    (root / "id3" / "v1" / "00004.wav").write_bytes(good[: len(good) // 2])  # truncated
    _wav(root / "id3" / "v2" / "00005.wav", 0.2)  # too short
    trials = tmp_path / "veri.txt"
    trials.write_text("1 id1/v1/00001.wav id1/v2/00001.wav\n"
                      "0 id1/v1/00003.wav id2/v1/00001.wav\n"      # names the corrupt file
                      "0 id2/v1/00002.wav id3/v2/00002.wav\n")
    return root, trials


def test_voxceleb_skips_counts_and_lists_bad_files(tmp_path: Path) -> None:
    root, trials_path = _corpus_with_bad_files(tmp_path)
    skipped: list[tuple[str, str]] = []
    df, trials = read_voxceleb(root, trials_path, skipped=skipped, min_seconds=0.5)
    assert len(df) == 12 and df["utt"].str.endswith(("00001.wav", "00002.wav")).all()
    reasons = dict(skipped)
    assert len(skipped) == 5  # 4 files and the trial list
    assert "corrupt or unsupported" in reasons[str(root / "id1/v1/00003.wav")]
    assert "empty file" in reasons[str(root / "id2/v2/00003.wav")]
    assert "truncated" in reasons[str(root / "id3/v1/00004.wav")]
    assert "too short (0.20 s < 0.5 s)" in reasons[str(root / "id3/v2/00005.wav")]
    for where, reason in skipped[:4]:
        assert where not in reason, reason  # the path once (in its own column), not twice
    assert len(trials) == 2 and "1 trial(s) dropped" in reasons[str(trials_path)]

    out = tmp_path / "prepared"
    write_corpus(df, trials, out, skipped)
    listed = pd.read_csv(out / "skipped.tsv", sep="\t")
    assert list(listed.columns) == ["where", "reason"] and len(listed) == 5
    write_corpus(df, trials, out, [])
    assert not (out / "skipped.tsv").exists()


def test_strict_stops_at_the_first_bad_file_naming_it_once(tmp_path: Path) -> None:
    root, _ = _corpus_with_bad_files(tmp_path)
    with pytest.raises(AudioError) as err:
        read_voxceleb(root)
    msg = str(err.value)
    assert msg.count(str(root)) == 1 and ("corrupt" in msg or "empty" in msg or "trunc" in msg)


def test_kaldi_skips_name_the_wav_scp_line(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    _wav(audio / "a.wav", 1.0)
    _wav(audio / "b.wav", 1.0, seed=1)
    d = tmp_path / "kaldi"
    d.mkdir()
    scp = f"a {audio / 'a.wav'}\nb {audio / 'b.wav'}\nc {audio / 'gone.wav'}\n"
    (d / "wav.scp").write_text(scp)
    (d / "utt2spk").write_text("a s1\nb s1\nc s2\n")
    skipped: list[tuple[str, str]] = []
    df, _ = read_kaldi(d, skipped=skipped)
    assert df["utt"].tolist() == ["a", "b"]
    assert skipped == [(f"{d / 'wav.scp'}:3", f"{audio / 'gone.wav'}: file not found")]
