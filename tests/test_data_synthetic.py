"""The built-in synthetic corpus: counts, banks, caching, speaker separability, load_corpus."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from speakertune.data.corpus import load_corpus
from speakertune.data.errors import DataError, TrialsError
from speakertune.data.manifest import read_manifest
from speakertune.data.synthetic import (
    channel_rooms,
    colored_noise,
    ensure_synthetic_corpus,
    speaker_profile,
    synth_utterance,
)
from speakertune.data.trials import read_trials

TINY = {"corpus": "synthetic", "speakers": 8, "utts_per_speaker": 4, "val_speakers": 2}


def test_counts_format_and_banks(tiny_corpus):
    df = read_manifest(tiny_corpus / "manifest.parquet")
    assert df["spk"].nunique() == 8 and df.groupby("spk").size().eq(4).all()
    profiles = pd.read_csv(tiny_corpus / "speakers.csv")
    assert dict(zip(profiles["spk"], profiles["voice"])) == dict(zip(df["spk"], df["voice"]))
    info = sf.info(df["uri"].iloc[0])
    assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
    assert np.isclose(info.frames / 16000, df["duration_s"].iloc[0])
    assert df["duration_s"].between(2.0, 20.0).all()  # 2-3 sentences each

    trials = read_trials(tiny_corpus / "trials.txt", known_utts=df["utt"])
    assert trials["label"].sum() * 2 == len(trials)
    summary = (tiny_corpus / "summary.md").read_text()
    assert "| speakers | 8 |" in summary and f"| trials_target | {len(trials) // 2} |" in summary
    assert (tiny_corpus / "durations.png").stat().st_size > 5000

    noise = read_manifest(tiny_corpus / "noise" / "manifest.parquet")
    assert set(noise["category"]) == {"noise", "music", "speech"}
    assert set(noise["kind"]) == {"white", "pink", "brown", "music", "babble"}
    rir = read_manifest(tiny_corpus / "rir" / "manifest.parquet")
    assert len(rir) >= 4 and rir["rt60"].between(0.2, 0.8).all()
    # The simulated rooms really reverberate as asked (pyroomacoustics' own RT60 estimate).
    assert np.allclose(rir["rt60_measured"], rir["rt60"], rtol=0.25)


def test_default_speakers_share_base_voices_but_not_profiles():
    profiles = pd.DataFrame([speaker_profile(i, seed=0) for i in range(100)])
    # Several speakers per base voice, so identity is not just the espeak voice name...
    assert profiles.groupby("voice").size().min() >= 5
    # ...but the fixed pitch/rate/tract-length factors make every speaker distinct.
    assert not profiles.duplicated(["voice", "pitch", "rate", "alpha"]).any()
    assert profiles["alpha"].between(0.85, 1.17).all() and profiles["alpha"].std() > 0.05


def test_noise_colours_have_the_right_spectral_slope():
    rng = np.random.default_rng(0)
    n = 1 << 16
    f = np.fft.rfftfreq(n, 1 / 16000)
    band = (f > 50) & (f < 5000)
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        power = np.abs(np.fft.rfft(colored_noise(kind, n, rng))) ** 2
        fit = np.polyfit(np.log10(f[band]), np.log10(power[band]), 1)[0]
        assert abs(fit - slope) < 0.15, (kind, fit)


def test_cached_and_half_built_corpus_is_rebuilt(tiny_corpus, tmp_path):
    marker = tiny_corpus / ".complete.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic_corpus(tiny_corpus, 8, 4, 0, progress=None) == tiny_corpus
    assert marker.stat().st_mtime_ns == stamp  # cached: nothing rebuilt
    assert json.loads(marker.read_text())["speakers"] == 8

    root = tmp_path / "half"
    messages: list[str] = []
    ensure_synthetic_corpus(root, 4, 2, seed=5, rirs=1, workers=1, progress=messages.append)
    first = read_manifest(root / "manifest.parquet")
    (root / ".complete.json").unlink()  # as if the build had been interrupted
    (root / "wav" / "spk0001" / "spk0001-u000.flac").write_bytes(b"partial")
    ensure_synthetic_corpus(root, 4, 2, seed=5, rirs=1, workers=1, progress=messages.append)
    assert sf.info(root / "wav" / "spk0001" / "spk0001-u000.flac").frames > 0
    # Same speakers, voices and texts; espeak-ng's pitch-flutter oscillator is process-global
    # state, so samples and durations (by < 1%) may differ between builds.
    again = read_manifest(root / "manifest.parquet")
    same = ["utt", "spk", "uri", "voice"]
    pd.testing.assert_frame_equal(again[same], first[same])
    np.testing.assert_allclose(again["duration_s"], first["duration_s"], rtol=0.01)
    assert sum("building" in m for m in messages) == 2  # progress is reported


def _mfcc_means(uris) -> np.ndarray:
    mfcc = torchaudio.transforms.MFCC(16000, n_mfcc=20, melkwargs={"n_mels": 40, "n_fft": 400})
    out = []
    for uri in uris:
        wave = torch.from_numpy(sf.read(uri, dtype="float32")[0])
        out.append(mfcc(wave)[1:].mean(dim=1).numpy())  # drop c0 (loudness)
    return np.stack(out)


def test_clean_voices_differ_more_than_utterances_of_one_speaker(tmp_path):
    """The voice design itself, before any channel: each speaker's clean speech is closer to
    its own other utterances than to other speakers'."""
    paths, spk = [], []
    for index in range(6):
        profile = speaker_profile(index, 0)
        for u in range(3):
            wave = synth_utterance(profile, np.random.default_rng([0, 2, index, u]))
            paths.append(tmp_path / f"{index}_{u}.wav")
            sf.write(paths[-1], wave, 16000)
            spk.append(index)
    x = _mfcc_means(paths)
    x = x - x.mean(axis=0)  # centre: cosine then measures deviations from the average voice
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = x @ x.T
    same = np.equal.outer(spk, spk)
    off_diag = ~np.eye(len(spk), dtype=bool)
    within, between = cos[same & off_diag].mean(), cos[~same].mean()
    print(f"MFCC-mean cosine: within-speaker {within:.3f}, between-speaker {between:.3f}")
    assert within > between + 0.3, (within, between)


def test_sessions_have_their_own_channel(tiny_corpus):
    """Every utterance of the tiny corpus is its own session (4 utterances, 4 sessions), each
    through a drawn channel; a speaker's trials cross sessions."""
    df = read_manifest(tiny_corpus / "manifest.parquet")
    assert df.groupby("spk")["session"].nunique().eq(4).all()
    assert df["channel"].nunique() == len(df)  # drawn per session
    assert len(list((tiny_corpus / "channels").glob("room_*.flac"))) == channel_rooms(8) == 4
    trials = read_trials(tiny_corpus / "trials.txt")
    session = dict(zip(df["utt"], df["session"]))
    target = trials[trials["label"] == 1]
    assert len(target) and all(session[a] != session[b] for a, b in
                               zip(target["enroll"], target["test"]))


def test_channel_colours_speech_as_its_filters_say():
    """With noise far below the speech, the output/input power spectrum is the microphone's
    response: band-pass x tilt x EQ, computed independently with scipy.signal.freqz."""
    from scipy.signal import butter, firwin2, freqz, sosfreqz, welch
    from speakertune.data.channels import EQ_BANDS_HZ, Channel, apply_channel

    rng = np.random.default_rng(0)
    ch = Channel(room=None, noise="white", snr_db=80.0, low_hz=200.0, high_hz=3500.0,
                 tilt=0.5, eq_db=tuple(rng.normal(0, 6, len(EQ_BANDS_HZ))), gain=0.5)
    x = rng.standard_normal(160000)
    y = apply_channel(x, ch, None, rng.standard_normal(len(x)), 16000)
    f, px = welch(x, 16000, nperseg=1024)
    _, py = welch(y.astype(np.float64), 16000, nperseg=1024)
    measured = 10 * np.log10(py / px)
    sos = butter(2, [200 / 8000, 3500 / 8000], "bandpass", output="sos")
    freqs = np.concatenate([[0.0], EQ_BANDS_HZ, [8000.0]]) / 8000
    gains = 10 ** (np.concatenate([[ch.eq_db[0]], ch.eq_db, [ch.eq_db[-1]]]) / 20)
    h = (sosfreqz(sos, worN=f, fs=16000)[1] * freqz([1, -0.5], worN=f, fs=16000)[1]
         * freqz(firwin2(257, freqs, gains), worN=f, fs=16000)[1])
    expected = 20 * np.log10(np.abs(h) + 1e-12)
    band = (f > 300) & (f < 3200)
    offset = np.median(measured[band] - expected[band])  # the output is rescaled to ch.gain
    assert np.abs(measured[band] - expected[band] - offset).max() < 1.5


def test_load_corpus_on_the_tiny_corpus(tiny_corpus, tmp_path):
    c = load_corpus({**TINY, "root": str(tiny_corpus), "val_trials": 20, "seed": 0})
    assert c.num_classes == 6 and sorted(c.train["label"].unique()) == list(range(6))
    assert not set(c.train["spk"]) & set(c.val["spk"]) and c.val["spk"].nunique() == 2
    assert set(c.trials["enroll"]) | set(c.trials["test"]) <= set(c.val["utt"])
    assert len(c.trials) == 20 and c.trials["label"].sum() == 10
    assert c.noise is not None and c.rir is not None
    # The corpus's own trials.txt is the same split and list the default config regenerates.
    own = read_trials(tiny_corpus / "trials.txt")
    again = load_corpus({**TINY, "root": str(tiny_corpus), "val_trials": 2000})
    pd.testing.assert_frame_equal(
        own.reset_index(drop=True), again.trials, check_like=False, check_dtype=False
    )
    # An explicit dev list decides the dev set; its speakers leave training.
    sub = load_corpus({"corpus": "manifest", "manifest": str(tiny_corpus / "manifest.parquet"),
                       "dev_trials": str(tiny_corpus / "trials.txt")})  # fmt: skip
    assert set(sub.val["utt"]) == set(own["enroll"]) | set(own["test"])
    assert sub.num_classes == 6
    # Bad input through the same entry point: a trial naming an unknown utterance.
    bad = tmp_path / "trials.txt"
    bad.write_text("spk0000-u000 spk0000-u001 1\nspk0000-u000 spk9999-u000 0\n")
    with pytest.raises(TrialsError, match=r"trials\.txt:2: unknown utterance 'spk9999-u000'"):
        load_corpus({"corpus": "manifest", "manifest": str(tiny_corpus / "manifest.parquet"),
                     "dev_trials": str(bad)})  # fmt: skip
    with pytest.raises(DataError, match=r"data\.manifest: required"):
        load_corpus({"corpus": "manifest"})


def _trials_of(spks: list[str], path, df: pd.DataFrame) -> None:
    """Every pair of the speakers' first two utterances, as an official-style list."""
    utts = [u for s in spks for u in sorted(df.loc[df["spk"] == s, "utt"])[:2]]
    lines = [f"{a} {b} {int(a.split('-')[0] == b.split('-')[0])}"
             for i, a in enumerate(utts) for b in utts[i + 1:]]
    path.write_text("\n".join(lines) + "\n")


def test_dev_and_test_roles_never_mix(tiny_corpus, tmp_path, capsys):
    from speakertune.config import ConfigError

    df = read_manifest(tiny_corpus / "manifest.parquet")
    spks = sorted(df["spk"].unique())
    _trials_of(spks[:2], tmp_path / "test.txt", df)
    base = {**TINY, "root": str(tiny_corpus), "val_trials": 20}
    c = load_corpus({**base, "test": {"o": {"trials": str(tmp_path / "test.txt")}}})
    assert "data.test: 8 utterances of 2 test speakers removed from train/dev (o)" in \
        capsys.readouterr().out
    assert set(c.test) == {"o"} and set(c.test["o"].utts["spk"]) == set(spks[:2])
    assert len(c.test["o"].trials) == 6
    for role in (c.train, c.val):  # generated dev speakers come from the rest
        assert not set(role["spk"]) & set(spks[:2])
    assert c.num_classes == 4 and c.val["spk"].nunique() == 2
    # A user dev list must not share a speaker with a test list.
    _trials_of(spks[1:3], tmp_path / "dev.txt", df)
    with pytest.raises(DataError, match=r"dev\.txt: dev list shares 1 speakers with test list "
                       r"'o'.*disjoint"):
        load_corpus({**base, "dev_trials": str(tmp_path / "dev.txt"),
                     "test": {"o": {"trials": str(tmp_path / "test.txt")}}})
    _trials_of(spks[2:4], tmp_path / "dev.txt", df)
    ok = load_corpus({**base, "dev_trials": str(tmp_path / "dev.txt"),
                      "test": {"o": {"trials": str(tmp_path / "test.txt"),
                                     "manifest": str(tiny_corpus / "manifest.parquet")}}})
    assert set(ok.val["spk"]) == set(spks[2:4]) and ok.num_classes == 4
    # The old key is refused, never quietly used as dev.
    with pytest.raises(ConfigError, match=r"^data\.trials: removed; use data\.dev_trials .*"
                       r"data\.test"):
        load_corpus({**base, "trials": str(tmp_path / "test.txt")})
    with pytest.raises(DataError, match=r"data\.test\.o: needs trials"):
        load_corpus({**base, "test": {"o": {"manifest": "x"}}})


def test_job_script_builds_with_worker_processes(tmp_path):
    """Spawned builder processes re-import the job script: it must not run a second time."""
    import subprocess
    import sys
    from pathlib import Path

    job = Path(__file__).resolve().parents[1] / "jobs" / "prepare.py"
    out = subprocess.run([sys.executable, str(job), "synthetic", "--speakers", "4", "--utts", "2",
                          "--workers", "2", "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("synthetic corpus ready") == 1
    assert out.stderr.count("building 4 speakers") == 1
