"""Features match torchaudio's Kaldi-compatible functions exactly and follow the YAML config."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from speakertune.config import resolve
from speakertune.data.audio import load_audio
from speakertune.frontend.features import FeatureError, build_feature, feature_dim, num_frames
from speakertune.registry import FEATURES, UnknownComponentError
from torchaudio.compliance import kaldi

SR = 16000


@pytest.fixture(scope="module")
def speech(tiny_corpus) -> torch.Tensor:
    """A real synthetic-speech utterance from the shared tiny corpus."""
    df = pd.read_parquet(tiny_corpus / "manifest.parquet")
    uri = str(tiny_corpus / df["uri"].iloc[0])
    return torch.from_numpy(load_audio(uri, SR))[: 2 * SR]


@pytest.mark.parametrize(
    "name, fn, extra",
    [
        ("fbank", kaldi.fbank, {"num_mel_bins": 40}),
        ("mfcc", kaldi.mfcc, {"num_mel_bins": 30, "num_ceps": 20}),
        ("spectrogram", kaldi.spectrogram, {}),
    ],
)
def test_matches_torchaudio_kaldi_exactly(speech, name, fn, extra):
    opts = {"frame_length": 30.0, "frame_shift": 12.5, "dither": 0.0, **extra}
    feat = build_feature({"name": name, "cmn": False, **opts})
    ours = feat(speech, SR)
    # Reference: the same waveform on the int16 scale Kaldi expects.
    ref = fn((speech * 32768.0).unsqueeze(0), sample_frequency=SR, **opts)
    assert torch.equal(ours, ref)
    assert ours.shape == (num_frames(len(speech), SR, opts), feature_dim({"name": name, **opts}))


def test_dither_matches_kaldi_with_the_same_torch_seed(speech):
    feat = build_feature({"name": "fbank", "num_mel_bins": 24, "dither": 1.0, "cmn": False})
    torch.manual_seed(7)
    ours = feat(speech, SR)
    torch.manual_seed(7)
    ref = kaldi.fbank((speech * 32768.0).unsqueeze(0), num_mel_bins=24, dither=1.0)
    assert torch.equal(ours, ref)
    torch.manual_seed(8)
    assert not torch.equal(feat(speech, SR), ref)  # dither really is random


def test_cmn_is_on_by_default_and_removes_the_per_utterance_mean(speech):
    cmn = build_feature({"name": "fbank", "num_mel_bins": 40})(speech, SR)
    raw = build_feature({"name": "fbank", "num_mel_bins": 40, "cmn": False})(speech, SR)
    assert raw.mean(0).abs().max() > 1.0  # log-mel energies are far from zero mean
    assert cmn.mean(0).abs().max() < 1e-4
    assert torch.allclose(cmn, raw - raw.mean(0), atol=1e-5)


def test_dimensions_and_framing_come_from_yaml(speech):
    text = """
    features: {name: mfcc, num_mel_bins: 40, num_ceps: 24, frame_length: 20, frame_shift: 5}
    """
    cfg = resolve(yaml.safe_load(text))
    feats = build_feature(cfg)(speech, SR)
    window, shift = int(SR * 0.020), int(SR * 0.005)
    assert feats.shape == (1 + (len(speech) - window) // shift, 24)  # Kaldi snip_edges framing
    assert feature_dim(cfg) == 24
    spec = resolve(flat={"features.name": "spectrogram"})  # keeps num_mel_bins: ignored
    assert feature_dim(spec) == 512 // 2 + 1 == build_feature(spec)(speech, SR).shape[1]


def test_registry_lists_all_three_and_bad_names_are_clear(speech):
    assert {"fbank", "mfcc", "spectrogram"} <= set(FEATURES.names())
    with pytest.raises(UnknownComponentError, match="did you mean 'fbank'"):
        build_feature({"name": "fbnak"})
    with pytest.raises(FeatureError, match=r"features\.num_cepz"):
        build_feature({"name": "mfcc", "num_cepz": 13})
    with pytest.raises(FeatureError, match="utt7: 100 samples is shorter than one 400-sample"):
        build_feature({"name": "fbank"})(speech[:100], SR, "utt7")
