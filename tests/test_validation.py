"""Validation helpers (no Ray): sampling, cropping, embedding batches and backend scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve
from speakertune.scoring.embed import embed_features
from speakertune.scoring.verification import score_backends


def test_embeddings_do_not_depend_on_batching():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.ReLU())

    class Pool(torch.nn.Module):
        def forward(self, x):  # [B, T, F] -> [B, 8]
            return enc(x.transpose(1, 2)).mean(dim=2)

    model = Pool()
    feats = {f"u{i}": torch.randn(50 * (1 + i % 3), 4) for i in range(7)}
    together = embed_features(model, feats, batch_size=32)
    alone = {u: embed_features(model, {u: f}, batch_size=1)[u] for u, f in feats.items()}
    assert together.keys() == feats.keys()
    for u in feats:
        np.testing.assert_allclose(together[u], alone[u], rtol=1e-5, atol=1e-6)


def _sklearn_eer(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores)
    i = int(np.argmin(np.abs((1 - tpr) - fpr)))
    return (fpr[i] + 1 - tpr[i]) / 2


def test_score_backends_against_independent_cosine():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 10)) * 2
    train = {f"t{s}_{k}": centres[s] + rng.normal(size=10) for s in range(8) for k in range(6)}
    spk = {u: u.split("_")[0] for u in train}
    val = {f"v{s}_{k}": centres[8 + s] + rng.normal(size=10) for s in range(4) for k in range(5)}
    utts = sorted(val)
    pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1 :]]
    trials = pd.DataFrame({"enroll": [a for a, _ in pairs], "test": [b for _, b in pairs],
                           "label": [int(a.split("_")[0] == b.split("_")[0]) for a, b in pairs]})
    vspk = {u: u.split("_")[0] for u in val}
    res = score_backends(train, spk, val, trials, {"plda": {"lda_dim": 6}}, "plda", vspk)
    mean = np.mean(list(train.values()), axis=0)

    def cos(a, b):
        a, b = val[a] - mean, val[b] - mean
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    ref = np.array([cos(a, b) for a, b in pairs])
    np.testing.assert_allclose(res.scores["cosine"], ref, rtol=1e-9)
    for name in ("cosine", "plda"):
        eer = res.metrics[f"val_eer_{name}"]
        assert abs(eer - _sklearn_eer(res.scores[name], trials["label"])) <= 1 / 40
        assert 0 <= res.metrics[f"val_min_dcf_{name}"] <= 1
    assert res.metrics["val_eer"] == res.metrics["val_eer_plda"]  # the named backend's only
    assert res.metrics["val_eer"] < 0.2  # well-separated synthetic speakers
    m = res.metrics  # its CI, resampling the 4 enrollment speakers
    assert m["val_eer_low"] <= m["val_eer"] <= m["val_eer_high"] <= 1.0


def test_score_backends_drops_trials_of_missing_utterances():
    rng = np.random.default_rng(1)
    train = {f"t{s}_{k}": rng.normal(size=4) + s for s in range(4) for k in range(3)}
    spk = {u: u.split("_")[0] for u in train}
    val = {u: rng.normal(size=4) for u in ("a1", "a2", "b1")}
    trials = pd.DataFrame({"enroll": ["a1", "a1", "a2", "zz"], "test": ["a2", "b1", "b1", "a1"],
                           "label": [1, 0, 0, 1]})
    res = score_backends(train, spk, val, trials, {"plda": {"lda_dim": 2}}, "cosine")
    assert res.dropped_trials == 1 and len(res.labels) == 3
    assert res.metrics["val_eer"] == res.metrics["val_eer_cosine"]

