"""Augmentation on real synthetic speech with the corpus' own noise and RIR banks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy import signal
from speakertune.data.audio import load_audio
from speakertune.frontend.augment import (
    NOISE,
    Augmenter,
    AugmentError,
    add_noise,
    num_classes_multiplier,
    reverb,
    segments,
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
    x = torch.from_numpy(speech)[None]
    T = x.shape[1]
    for category, target in (("noise", 0.0), ("music", 7.5), ("noise", 15.0)):
        uri = noise.loc[noise["category"] == category, "uri"].iloc[0]
        n = segments([torch.from_numpy(load_audio(uri, SR))], torch.tensor([0]),
                     torch.tensor([0.3]), T)  # fmt: skip
        mixed = add_noise(x, n, torch.tensor([target]))
        assert mixed.shape == x.shape
        assert snr_db(speech, mixed[0].numpy()) == pytest.approx(target, abs=0.5)
    talkers = [torch.from_numpy(load_audio(u, SR))
               for u in noise.loc[noise["category"] == "speech", "uri"][:5]]  # fmt: skip
    mix = sum(segments(talkers, torch.tensor([i]), torch.tensor([0.5]), T) for i in range(5))
    mixed = add_noise(x, mix, torch.tensor([5.0]))
    assert snr_db(speech, mixed[0].numpy()) == pytest.approx(5.0, abs=0.5)


def test_segments_tile_and_cut_like_fit_length():
    items = [torch.arange(5.0), torch.arange(100.0, 112.0)]
    out = segments(items, torch.tensor([0, 1, 1]), torch.tensor([0.0, 0.0, 0.999]), 8)
    assert out[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # tiled: 5 samples -> 8
    assert out[1].tolist() == list(range(100, 108))
    assert out[2].tolist() == list(range(104, 112))  # the last valid start of 12 - 8


def test_reverb_keeps_length_and_fills_gaps_with_late_energy(banks):
    speech, _, rir_df = banks
    gap = slice(SR // 2, SR // 2 + SR // 4)
    dry = speech.copy()
    dry[gap] = 0.0  # a silent stretch: only reverberation can put energy there
    rir = load_audio(rir_df["uri"].iloc[0], SR)
    short = rir[: len(rir) // 2]  # two RIR lengths in one batch (zero-padded together)
    wet = reverb(torch.from_numpy(np.stack([dry, dry])), [torch.from_numpy(rir),
                                                          torch.from_numpy(short)]).numpy()
    assert wet.shape == (2, len(dry))

    def late_ratio(x):
        return np.sum(x[gap].astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2)

    assert late_ratio(dry) == 0.0 and late_ratio(wet[0]) > 1e-3
    # Independent reference: SciPy's float64 convolution aligned on the RIR peak, rescaled to
    # dry power.
    for got, r in zip(wet, (rir, short)):
        d = int(np.argmax(np.abs(r)))
        ref = signal.fftconvolve(dry.astype(np.float64), r)[d : d + len(dry)]
        ref *= np.sqrt(np.mean(dry.astype(np.float64) ** 2) / np.mean(ref**2))
        assert np.allclose(got, ref, atol=1e-4)


def test_speed_perturbation_changes_duration_and_pitch():
    t = np.arange(SR) / SR
    x = torch.from_numpy(np.sin(2 * np.pi * 500 * t).astype(np.float32))
    for factor in (0.9, 1.1):
        y = speed_perturb(x, SR, factor).numpy()
        assert len(y) == pytest.approx(SR / factor, abs=2)
        peak = np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(np.abs(np.fft.rfft(y)))]
        assert peak == pytest.approx(500 * factor, abs=2.0)
    assert torch.equal(speed_perturb(x, SR, 1.0), x)


def test_spec_augment_masks_bands_reproducibly():
    feats = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 200, 40))
                             .astype(np.float32) + 5)  # fmt: skip
    aug = Augmenter({"augment": {"specaug_prob": 1.0, "specaug": {
        "freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 20}}})
    plans = [aug.draw(np.random.default_rng(s), 200, 40) for s in (3, 3, 4)]
    masks = torch.from_numpy(np.stack([p["masks"] for p in plans]))
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    out = spec_augment(feats[[0, 0, 0]], masks, freq_masks=2).numpy()
    assert np.array_equal(out[0], out[1]) and out.shape == (3, 200, 40)
    a = out[0]
    ref = feats[0].numpy().copy()  # NumPy reference: zero each (start, width) band
    for m, (start, width) in enumerate(plans[0]["masks"]):
        if m < 2:
            ref[:, start : start + width] = 0
        else:
            ref[start : start + width] = 0
    assert np.array_equal(a, ref)
    assert len(np.flatnonzero((a == 0).all(axis=0))) <= 16
    assert len(np.flatnonzero((a == 0).all(axis=1))) <= 40


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
    _, noise, rir = banks
    cfg = {"augment": {"noise_prob": 1.0, "reverb_prob": 1.0, "speed_prob": 1.0,
                       "speed_as_new_speaker": True, "snr_db": [5, 5]}}  # fmt: skip
    aug = Augmenter(cfg, noise, rir, seed=0, sample_rate=SR)
    p1, p2 = (aug.draw(np.random.default_rng(9), 100, 24) for _ in range(2))
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)  # same seed, same plan
    assert 0 <= p1["rir"] < len(aug.rir_uris) and p1["noise_kind"] == NOISE
    assert p1["snr"] == 5.0 and 0 <= p1["noise_idx"][0] < len(aug.noise_uris)
    assert (p1["noise_idx"][1:] == -1).all() and 0 <= p1["noise_off"][0] < 1
    factor, k = aug.speed_choice(np.random.default_rng(0))
    assert factor in (0.9, 1.1) and aug.label_offset(k, 10) == 10 * k and k in (1, 2)
    assert num_classes_multiplier(cfg) == 3
    assert num_classes_multiplier({"augment": {"speed_prob": 1.0}}) == 1
    off = Augmenter({"augment": {}}, None, None).draw(np.random.default_rng(0), 100, 24)
    assert off["rir"] == -1 and off["noise_kind"] == 0 and not off["masks"][:, 1].any()
    with pytest.raises(AugmentError, match=r"augment\.reverb_prob > 0 but the bank has no RIRs"):
        Augmenter({"augment": {"reverb_prob": 0.5, "rir_bank": None}}, noise, None)
    with pytest.raises(AugmentError, match=r"augment\.noise_prob: 1\.5"):
        Augmenter({"augment": {"noise_prob": 1.5}}, noise, rir)
