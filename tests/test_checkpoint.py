"""Checkpoint save/load round trip (weights_only) and batched embedding extraction."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from speakertune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speakertune.config import resolve
from speakertune.data.audio import load_audio
from speakertune.frontend.pipeline import extract_features
from speakertune.models import build_encoder
from speakertune.scoring.backends import CosineBackend, PLDABackend
from speakertune.scoring.embed import EmbeddingError, embed_utterances

SR = 16000


def tiny_cfg() -> dict:
    return resolve({
        "model": {"name": "tdnn", "channels": 16, "out_channels": 24},
        "pooling": {"name": "stats"},
        "features": {"name": "fbank", "num_mel_bins": 24},
        "embed_dim": 8,
    })


def tiny_encoder(cfg: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    enc = build_encoder(cfg["model"], cfg["pooling"], 24, cfg["embed_dim"])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def write_wavs(root, lengths_s, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, sec in enumerate(lengths_s):
        t = np.arange(int(sec * SR)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.02 * rng.normal(size=t.size)
        path = root / f"u{i}.wav"
        sf.write(path, wave.astype(np.float32), SR)
        rows.append((f"u{i}", f"s{i % 2}", str(path)))
    return pd.DataFrame(rows, columns=["utt", "spk", "uri"])


def test_save_load_round_trip(tmp_path):
    cfg = tiny_cfg()
    enc = tiny_encoder(cfg)
    loss = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(list(enc.parameters()) + list(loss.parameters()), lr=1e-3)
    x = torch.randn(4, 50, 24)
    enc.train()
    enc(x).sum().backward()
    opt.step()  # an optimizer state with moments to save
    enc.eval()
    rng = np.random.default_rng(0)
    emb, spk = rng.normal(size=(40, 8)), np.repeat(np.arange(8), 5)
    backends = {"plda": PLDABackend(lda_dim=4).fit(emb, spk), "cosine": CosineBackend().fit(emb)}
    d = save_checkpoint(tmp_path / "ckpt", encoder=enc, loss=loss, cfg=cfg, num_classes=3,
                        feat_dim=24, backends=backends,
                        train_state={"optimizer": opt.state_dict(), "epoch": 2},
                        metrics={"val_eer": np.float32(0.125), "epoch": 2})
    assert sorted(p.name for p in d.iterdir()) == [
        "backend_cosine.npz", "backend_plda.npz", "config.yaml", "metrics.json", "model.pt",
        "train_state.pt"]
    ck = load_checkpoint(d)
    assert not ck.encoder.training
    with torch.no_grad():
        torch.testing.assert_close(ck.encoder(x), enc(x), rtol=0, atol=0)
    assert ck.cfg == cfg and ck.num_classes == 3 and ck.feat_dim == 24
    torch.testing.assert_close(ck.loss_state["weight"], loss.weight.detach())
    assert ck.train_state["epoch"] == 2
    opt2 = torch.optim.Adam(list(enc.parameters()) + list(loss.parameters()), lr=1e-3)
    opt2.load_state_dict(ck.train_state["optimizer"])  # resumable
    assert ck.metrics == json.loads(json.dumps({"val_eer": 0.125, "epoch": 2}))
    for name, b in backends.items():
        np.testing.assert_array_equal(ck.backends[name].score(emb[:5], emb[5:10]),
                                      b.score(emb[:5], emb[5:10]))
    encoder, cfg2, plda = ck  # the older 3-tuple unpacking still works
    assert plda is ck.backends["plda"] and cfg2 is ck.cfg and encoder is ck.encoder


def test_load_refuses_pickled_objects_and_names_the_problem(tmp_path):
    cfg = tiny_cfg()
    d = save_checkpoint(tmp_path / "c", encoder=tiny_encoder(cfg), loss=None, cfg=cfg,
                        num_classes=2, feat_dim=24)
    model = torch.load(d / "model.pt", weights_only=True)
    model["when"] = datetime.date(2024, 1, 1)  # not a tensor/plain type: needs unpickling
    torch.save(model, d / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: cannot load"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="no model.pt"):
        load_checkpoint(tmp_path / "missing")
    bad = dict(cfg, model={"name": "tdnn", "channels": 32, "out_channels": 24})
    d2 = save_checkpoint(tmp_path / "c2", encoder=tiny_encoder(cfg), loss=None, cfg=bad,
                         num_classes=2, feat_dim=24)
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_checkpoint(d2)


def test_embed_utterances_matches_one_by_one_and_counts_skips(tmp_path):
    cfg = tiny_cfg()
    enc = tiny_encoder(cfg)
    df = write_wavs(tmp_path, [1.0, 1.0, 1.5, 1.0, 1.5, 0.8])
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    df = pd.concat([df, pd.DataFrame([("bad", "s0", str(tmp_path / "bad.wav")),
                                      ("gone", "s1", str(tmp_path / "gone.wav"))],
                                     columns=df.columns)], ignore_index=True)
    emb = embed_utterances(enc, df, cfg, batch_size=2)
    assert sorted(emb) == [f"u{i}" for i in range(6)]
    assert set(emb.skipped) == {"bad", "gone"} and "bad.wav" in emb.skipped["bad"]
    with torch.no_grad():
        for utt, uri in zip(df["utt"][:6], df["uri"][:6]):
            feats = extract_features(load_audio(uri, SR), cfg)
            ref = enc(feats[None].float())[0].numpy()
            np.testing.assert_allclose(emb[utt], ref, rtol=1e-4, atol=1e-5)
    # max_seconds keeps the middle max_seconds of every longer utterance
    short = embed_utterances(enc, df.iloc[:6], cfg, max_seconds=0.5)
    with torch.no_grad():
        feats = extract_features(load_audio(df["uri"][2], SR), cfg)
        start = (len(feats) - 50) // 2
        feats = feats[start : start + 50]
        np.testing.assert_allclose(short["u2"], enc(feats[None].float())[0].numpy(),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(EmbeddingError, match="none of 2"):
        embed_utterances(enc, df.iloc[6:], cfg)
