"""Augmentation on real synthetic speech with the corpus' own noise and RIR banks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from speakertune.data.audio import load_audio
from speakertune.frontend.augment import (
    Augmenter,
    AugmentError,
    add_noise,
    babble,
    num_classes_multiplier,
    reverb,
    spec_augment,
    speed_perturb,
)
from speakertune.frontend.banks import read_bank

SR = 16000


@pytest.fixture(scope="module")
def banks(tiny_corpus):
    noise = pd.read_parquet(tiny_corpus / "noise" / "manifest.parquet")
    noise["uri"] = [str(tiny_corpus / "noise" / u) for u in noise["uri"]]
    rir = pd.read_parquet(tiny_corpus / "rir" / "manifest.parquet")
    rir["uri"] = [str(tiny_corpus / "rir" / u) for u in rir["uri"]]
    df = pd.read_parquet(tiny_corpus / "manifest.parquet")
    speech = load_audio(str(tiny_corpus / df["uri"].iloc[2]), SR)[: 2 * SR]
    return speech, noise, rir


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def test_noise_and_babble_hit_the_requested_snr(banks):
    speech, noise, _ = banks
    rng = np.random.default_rng(0)
    for category, target in (("noise", 0.0), ("music", 7.5), ("noise", 15.0)):
        uri = noise.loc[noise["category"] == category, "uri"].iloc[0]
        mixed = add_noise(speech, load_audio(uri, SR), target, rng)
        assert len(mixed) == len(speech)
        assert snr_db(speech, mixed) == pytest.approx(target, abs=0.5)
    talkers = [load_audio(u, SR) for u in noise.loc[noise["category"] == "speech", "uri"][:5]]
    mixed = babble(speech, talkers, 5.0, rng)
    assert snr_db(speech, mixed) == pytest.approx(5.0, abs=0.5)


def test_reverb_keeps_length_and_fills_gaps_with_late_energy(banks):
    speech, _, rir_df = banks
    gap = slice(SR // 2, SR // 2 + SR // 4)
    dry = speech.copy()
    dry[gap] = 0.0  # a silent stretch: only reverberation can put energy there
    rir = load_audio(rir_df["uri"].iloc[0], SR)
    wet = reverb(dry, rir)
    assert len(wet) == len(dry)

    def late_ratio(x):
        return np.sum(x[gap].astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2)

    assert late_ratio(dry) == 0.0 and late_ratio(wet) > 1e-3
    # Independent reference: direct convolution aligned on the RIR peak, rescaled to dry power.
    d = int(np.argmax(np.abs(rir)))
    ref = np.convolve(dry.astype(np.float64), rir)[d : d + len(dry)]
    ref *= np.sqrt(np.mean(dry.astype(np.float64) ** 2) / np.mean(ref**2))
    assert np.allclose(wet, ref, atol=1e-4)


def test_speed_perturbation_changes_duration_and_pitch():
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 500 * t).astype(np.float32)
    for factor in (0.9, 1.1):
        y = speed_perturb(x, SR, factor)
        assert len(y) == pytest.approx(SR / factor, abs=2)
        peak = np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(np.abs(np.fft.rfft(y)))]
        assert peak == pytest.approx(500 * factor, abs=2.0)
    assert np.array_equal(speed_perturb(x, SR, 1.0), x)


def test_spec_augment_masks_bands_reproducibly():
    feats = np.random.default_rng(0).standard_normal((200, 40)).astype(np.float32) + 5
    a = spec_augment(feats, np.random.default_rng(3), freq_masks=2, freq_width=8,
                     time_masks=2, time_width=20)  # fmt: skip
    b = spec_augment(feats, np.random.default_rng(3), freq_masks=2, freq_width=8,
                     time_masks=2, time_width=20)  # fmt: skip
    assert np.array_equal(a, b) and a.shape == feats.shape
    zero_cols = np.flatnonzero((a == 0).all(axis=0))
    zero_rows = np.flatnonzero((a == 0).all(axis=1))
    assert len(zero_cols) <= 16 and len(zero_rows) <= 40
    kept = ~(a == 0)
    assert np.array_equal(a[kept], feats[kept])  # everything else untouched
    assert not np.array_equal(a, spec_augment(feats, np.random.default_rng(4), 2, 8, 2, 20))


def test_read_bank_from_a_musan_style_directory(tmp_path):
    for cat in ("noise", "music", "speech"):
        (tmp_path / cat / "sub").mkdir(parents=True)
        sf.write(tmp_path / cat / "sub" / "a.wav", np.zeros(800, np.float32), SR)
    (tmp_path / "README").write_text("not audio")
    bank = read_bank(str(tmp_path))
    assert sorted(bank["category"]) == ["music", "noise", "speech"]
    assert all(u.endswith("a.wav") for u in bank["uri"])
    with pytest.raises(AugmentError, match="not found"):
        read_bank(str(tmp_path / "missing"))
    # A bank named in the config is what the Augmenter draws from.
    aug = Augmenter({"augment": {"noise_bank": str(tmp_path), "babble_prob": 1.0}})
    assert aug.speech_uris == [str(tmp_path / "speech" / "sub" / "a.wav")]
    assert sorted(aug.noise_uris) == sorted(
        str(tmp_path / c / "sub" / "a.wav") for c in ("music", "noise"))


def test_augmenter_probabilities_labels_and_errors(banks):
    speech, noise, rir = banks
    cfg = {"augment": {"noise_prob": 1.0, "reverb_prob": 1.0, "speed_prob": 1.0,
                       "speed_as_new_speaker": True, "snr_db": [5, 5]}}  # fmt: skip
    aug = Augmenter(cfg, noise, rir, seed=0, sample_rate=SR)
    out1 = aug.waveform(speech, np.random.default_rng(9))
    out2 = aug.waveform(speech, np.random.default_rng(9))
    assert np.array_equal(out1, out2) and not np.allclose(out1, speech)
    factor, k = aug.speed_choice(np.random.default_rng(0))
    assert factor in (0.9, 1.1) and aug.label_offset(k, 10) == 10 * k and k in (1, 2)
    assert num_classes_multiplier(cfg) == 3
    assert num_classes_multiplier({"augment": {"speed_prob": 1.0}}) == 1
    off = Augmenter({"augment": {}}, None, None)
    assert np.array_equal(off.waveform(speech, np.random.default_rng(0)), speech)
    with pytest.raises(AugmentError, match=r"augment\.reverb_prob > 0 but the bank has no RIRs"):
        Augmenter({"augment": {"reverb_prob": 0.5, "rir_bank": None}}, noise, None)
    with pytest.raises(AugmentError, match=r"augment\.noise_prob: 1\.5"):
        Augmenter({"augment": {"noise_prob": 1.5}}, noise, rir)
