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


def test_prepare_command_skips_by_default_and_strict_fails(tmp_path: Path, capsys) -> None:
    from speakertune.commands.prepare import main

    root, trials = _corpus_with_bad_files(tmp_path)
    out = tmp_path / "vox"
    assert main(["voxceleb", str(root), "--trials", str(trials), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 utterances, 3 speakers" in printed and "skipped 5" in printed
    assert len(pd.read_csv(out / "skipped.tsv", sep="\t")) == 5
    assert main(["voxceleb", str(root), "--out", str(tmp_path / "s"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_prepare_musan_and_rirs_banks(tmp_path: Path) -> None:
    from speakertune.commands.prepare import main
    from speakertune.data.manifest import read_manifest
    from speakertune.frontend.augment import Augmenter

    musan = tmp_path / "musan"
    for cat in ("music", "speech", "noise"):
        _wav(musan / cat / "src" / f"{cat}-0001.wav", 1.0)
    (musan / "noise" / "src" / "broken.wav").write_bytes(b"RIFFjunk")
    rirs = tmp_path / "RIRS_NOISES"
    _wav(rirs / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav", 0.3)
    _wav(rirs / "real_rirs_isotropic_noises" / "air_type1_air_binaural_rir_1.wav", 0.3)
    _wav(rirs / "real_rirs_isotropic_noises" / "RVB2014_type1_noise_largeroom1_1.wav", 1.0)
    _wav(rirs / "pointsource_noises" / "noise-free-sound-0001.wav", 1.0)
    assert main(["musan", str(musan), "--out", str(tmp_path / "m")]) == 0
    assert main(["rirs", str(rirs), "--out", str(tmp_path / "r")]) == 0
    noise = read_manifest(tmp_path / "m" / "manifest.parquet")
    rir = read_manifest(tmp_path / "r" / "manifest.parquet")
    assert sorted(noise["category"]) == ["music", "noise", "speech"]
    assert sorted(rir["category"]) == ["real", "smallroom"]  # no isotropic/point-source noise
    aug = Augmenter({"augment": {"noise_prob": 1.0, "babble_prob": 1.0, "reverb_prob": 1.0,
                                 "noise_bank": str(tmp_path / "m" / "manifest.parquet"),
                                 "rir_bank": str(tmp_path / "r" / "manifest.parquet")}})
    assert len(aug.noise_uris) == 2 and len(aug.speech_uris) == 1 and len(aug.rir_uris) == 2


def test_banks_are_checked_before_anything_starts(tmp_path: Path) -> None:
    from speakertune.config import resolve
    from speakertune.frontend.banks import AugmentError, check_banks

    cfg = resolve({"augment": {"noise_prob": 0.5, "noise_bank": str(tmp_path / "nope")}})
    with pytest.raises(AugmentError, match=r"augment\.noise_bank: .*nope: noise/RIR bank not"):
        check_banks(cfg)
    (tmp_path / "empty").mkdir()
    cfg["augment"]["noise_bank"] = str(tmp_path / "empty")
    with pytest.raises(AugmentError, match=r"augment\.noise_bank: .*no audio files"):
        check_banks(cfg)
    cfg["augment"]["noise_bank"] = None
    with pytest.raises(AugmentError, match="needs a noise bank"):
        check_banks(cfg)
    cfg["augment"]["noise_prob"] = 0.0
    check_banks(cfg)  # no augmentation, no bank needed
    check_banks(resolve({"augment": {"reverb_prob": 1.0}}))  # builtin: built when used


@pytest.mark.slow
def test_builtin_banks_serve_a_prepared_corpus(tmp_path: Path) -> None:
    from speakertune.frontend.augment import Augmenter

    cfg = {"augment": {"noise_prob": 1.0, "babble_prob": 1.0, "reverb_prob": 1.0,
                       "builtin_banks_dir": str(tmp_path / "banks")}}
    aug = Augmenter(cfg)  # a prepared corpus has no banks of its own: the built-in ones
    assert len(aug.noise_uris) == 10 and len(aug.speech_uris) == 6 and len(aug.rir_uris) == 20
    assert all(u.startswith(str(tmp_path / "banks")) for u in aug.rir_uris)
    plan = aug.draw(np.random.default_rng(1), 100, 24)
    assert 0 <= plan["rir"] < 20 and plan["noise_kind"] == 1


def test_a_missing_bank_is_a_space_error_before_ray(tmp_path: Path, capsys) -> None:
    import yaml
    from speakertune.commands.sweep import main

    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "name": "banks", "base": {"augment": {"noise_bank": str(tmp_path / "musan")}},
        "params": {"augment.noise_prob": {"uniform": [0.2, 0.8]}}}))
    assert main(["--space", str(space), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: augment.noise_bank: ") and len(err.splitlines()) == 1
    assert "musan: noise/RIR bank not found (with {'augment.noise_prob': " in err  # the values
