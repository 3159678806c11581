"""Corpus readers (Kaldi, VoxCeleb, CSV) on small fixtures, bad input, and `speakertune prepare`."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import soundfile as sf
from speakertune.commands import prepare
from speakertune.data.errors import AudioError, ManifestError, TrialsError
from speakertune.data.manifest import read_manifest
from speakertune.data.readers import materialize_segments, read_csv, read_kaldi, read_voxceleb
from speakertune.data.trials import read_trials


def _wav(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    sf.write(path, x, sr)
    return path


def _kaldi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "kaldi"
    audio = tmp_path / "audio"
    _wav(audio / "r1.wav", 2.0, 8000)
    _wav(audio / "r2.wav", 1.5)
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {audio / 'r1.wav'}\nrec2 ../audio/r2.wav\n")
    (d / "utt2spk").write_text("rec1 alice\nrec2 bob\n")
    (d / "trials").write_text("rec1 rec2 nontarget\n")
    return d


def test_kaldi_dir(tmp_path):
    df, trials = read_kaldi(_kaldi_dir(tmp_path))
    assert df["utt"].tolist() == ["rec1", "rec2"] and df["spk"].tolist() == ["alice", "bob"]
    np.testing.assert_allclose(df["duration_s"], [2.0, 1.5])
    assert df["sample_rate"].tolist() == [8000, 16000]
    assert df["uri"].iloc[1] == str(tmp_path / "audio" / "r2.wav")  # relative to the data dir
    assert trials.values.tolist() == [["rec1", "rec2", 0]]


def test_kaldi_segments_and_spk2utt(tmp_path):
    d = _kaldi_dir(tmp_path)
    (d / "utt2spk").unlink()
    (d / "spk2utt").write_text("alice a1 a2\nbob b1\n")
    (d / "segments").write_text("a1 rec1 0.0 0.5\na2 rec1 0.5 1.75\nb1 rec2 0.25 1.0\n")
    (d / "trials").write_text("a1 a2 target\na1 b1 nontarget\n")
    df, trials = read_kaldi(d)
    assert dict(zip(df["utt"], df["spk"])) == {"a1": "alice", "a2": "alice", "b1": "bob"}
    np.testing.assert_allclose(df["duration_s"], [0.5, 1.25, 0.75])
    cut = materialize_segments(df, tmp_path / "segs")
    assert "offset_s" not in cut
    original = sf.read(tmp_path / "audio" / "r1.wav", dtype="float32")[0]
    piece = sf.read(cut["uri"].iloc[1], dtype="float32")[0]
    np.testing.assert_allclose(piece, original[4000:14000], atol=1e-4)  # 0.5 s..1.75 s at 8 kHz


@pytest.mark.parametrize(
    "name,text,pattern",
    [
        ("wav.scp", "rec1\n", r"wav\.scp:1: expected >= 2 fields"),
        ("wav.scp", "rec1 {a}\nrec1 {a}\n", r"wav\.scp:2: duplicate id 'rec1' \(first at line 1\)"),
        ("wav.scp", "rec1 sox x.wav -t wav - |\n", r"wav\.scp:1: 'rec1': only plain paths"),
        ("wav.scp", "rec1 {a}\nrec3 {a}\n", r"wav\.scp:2: utterance 'rec3' has no speaker"),
        ("wav.scp", "rec1 /no/such.wav\n", r"wav\.scp:1: /no/such\.wav: file not found"),
        ("utt2spk", "rec1 alice extra\n", r"utt2spk:1: expected 2 fields"),
        ("trials", "rec1 ghost target\n", r"trials:1: unknown utterance 'ghost'"),
        ("segments", "s1 recX 0 1\n", r"segments:1: recording 'recX' not in wav\.scp"),
        ("segments", "s1 rec1 1.0 0.5\n", r"segments:1: need 0 <= start < end"),
    ],
)
def test_kaldi_bad_input(tmp_path, name, text, pattern):
    d = _kaldi_dir(tmp_path)
    (d / "utt2spk").write_text("rec1 alice\nrec2 bob\ns1 alice\n")
    (d / name).write_text(text.format(a=tmp_path / "audio" / "r1.wav"))
    if name != "trials":
        (d / "trials").unlink()
    with pytest.raises((ManifestError, TrialsError, AudioError), match=pattern):
        read_kaldi(d)


def _voxceleb(tmp_path: Path) -> Path:
    root = tmp_path / "vox" / "wav"
    for spk, vid, n in [("id10270", "x6uYqmx31kE", 1), ("id10270", "8jEAjG6SegY", 8),
                        ("id10300", "ba4ki8wQ4vA", 1)]:  # fmt: skip
        _wav(root / spk / vid / f"{n:05d}.wav", 1.0, seed=n)
    return root


def test_voxceleb_layout_and_official_trials(tmp_path):
    root = _voxceleb(tmp_path)
    trials_path = tmp_path / "veri.txt"
    trials_path.write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ba4ki8wQ4vA/00001.wav\n"
    )
    df, trials = read_voxceleb(root, trials_path)
    assert sorted(df["spk"].unique()) == ["id10270", "id10300"] and len(df) == 3
    assert "id10270/8jEAjG6SegY/00008.wav" in set(df["utt"])
    assert trials["label"].tolist() == [1, 0]
    trials_path.write_text("1 id10270/x6uYqmx31kE/00001.wav id10999/zzz/00001.wav\n")
    with pytest.raises(TrialsError, match=r"veri\.txt:1: unknown utterance 'id10999/zzz/00001"):
        read_voxceleb(root, trials_path)
    (root / "id10300" / "ba4ki8wQ4vA" / "00002.wav").write_bytes(b"RIFF....broken")
    with pytest.raises(AudioError, match=r"00002\.wav: .*corrupt or unsupported audio"):
        read_voxceleb(root)


def test_csv_reader(tmp_path):
    _wav(tmp_path / "a.wav", 1.25)
    _wav(tmp_path / "sub" / "b.flac", 0.5, sr=22050)
    csv = tmp_path / "corpus.csv"
    csv.write_text("utt,spk,uri\nu1,alice,a.wav\nu2,bob,sub/b.flac\n")
    df, _ = read_csv(csv)
    np.testing.assert_allclose(df["duration_s"], [1.25, 0.5])
    assert df["sample_rate"].tolist() == [16000, 22050]
    assert df["uri"].iloc[1] == str(tmp_path / "sub" / "b.flac")
    cases = {
        "utt,uri\nu1,a.wav\n": r"corpus\.csv:1: header lacks column 'spk'",
        "utt,spk,uri\nu1,alice,a.wav\nu1,bob,a.wav\n": r"corpus\.csv:3: duplicate utt 'u1'",
        "utt,spk,uri\nu1,alice\n": r"corpus\.csv:2: expected 3 fields, got 2",
        "utt,spk,uri\nu1,,a.wav\n": r"corpus\.csv:2: empty 'spk'",
        "utt,spk,uri\nu1,alice,gone.wav\n": r"corpus\.csv:2: .*gone\.wav: file not found",
        "utt,spk,uri,duration_s,sample_rate\nu1,a,a.wav,x,16000\n": r"csv:2: duration_s is not",
    }
    for text, pattern in cases.items():
        csv.write_text(text)
        with pytest.raises((ManifestError, AudioError), match=pattern):
            read_csv(csv)
    (tmp_path / "empty.wav").write_bytes(b"")
    csv.write_text("utt,spk,uri\nu1,alice,empty.wav\n")
    with pytest.raises(AudioError, match=r"corpus\.csv:2: .*empty\.wav"):
        read_csv(csv)


def test_prepare_job_writes_manifest_and_trials(tmp_path, capsys):
    root = _voxceleb(tmp_path)
    (tmp_path / "veri.txt").write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
    )
    out = tmp_path / "prepared"
    code = prepare.main(["voxceleb", str(root), "--trials", str(tmp_path / "veri.txt"),
                         "--out", str(out)])  # fmt: skip
    assert code == 0
    df = read_manifest(out / "manifest.parquet")
    assert len(df) == 3 and all(Path(u).exists() for u in df["uri"])
    assert read_trials(out / "trials.txt", known_utts=df["utt"])["label"].tolist() == [1]
    assert "3 utterances, 2 speakers" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    hours = df["duration_s"].sum() / 3600
    assert "| utterances | 3 |" in summary and "| speakers | 2 |" in summary
    assert f"| hours | {hours:.2f} |" in summary and "| trials_target | 1 |" in summary
    image = plt.imread(out / "durations.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.05
    code = prepare.main(["csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "missing.csv: file not found" in err
