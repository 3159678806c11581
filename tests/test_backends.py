"""Cosine backend, trial scoring with multi-utterance enrollment, AS-norm, DET/t-SNE plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from sklearn.metrics.pairwise import cosine_similarity
from speakertune.registry import BACKENDS
from speakertune.scoring.backends import (
    ASNorm,
    BackendError,
    CosineBackend,
    PLDABackend,
    enroll_ids,
    score_trials,
)
from speakertune.scoring.metrics import eer
from speakertune.scoring.plots import plot_det, plot_tsne

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_backends_are_registered_by_name():
    assert {"cosine", "plda"} <= set(BACKENDS.names())
    assert isinstance(BACKENDS.build({"name": "cosine", "mean_norm": False}), CosineBackend)


@pytest.mark.parametrize("mean_norm", [True, False])
def test_cosine_matches_sklearn(mean_norm):
    rng = np.random.default_rng(0)
    train = rng.normal(2.0, 1.0, size=(100, 8))
    a, b = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    cos = CosineBackend(mean_norm=mean_norm).fit(train)
    shift = train.mean(0) if mean_norm else 0.0
    ref = cosine_similarity(a - shift, b - shift)
    np.testing.assert_allclose(cos.score(a, b), np.diag(ref), atol=1e-12)
    np.testing.assert_allclose(cos.score_matrix(cos.transform(a), cos.transform(b)), ref,
                               atol=1e-12)
    back = CosineBackend.from_state(cos.to_state())
    np.testing.assert_array_equal(back.score(a, b), cos.score(a, b))


def test_score_trials_averages_enrollment_and_keeps_order():
    rng = np.random.default_rng(1)
    emb = {f"u{i}": rng.normal(size=6) for i in range(6)}
    trials = pd.DataFrame({"enroll": ["u0,u1", "u2", "u0,u1", "u3"],
                           "test": ["u4", "u5", "u5", "u4"], "label": [1, 0, 1, 0]})
    assert enroll_ids("u0,u1") == ["u0", "u1"]
    cos = CosineBackend(mean_norm=False).fit(np.stack(list(emb.values())))
    got = score_trials(cos, emb, trials)
    unit = {k: v / np.linalg.norm(v) for k, v in emb.items()}
    avg = unit["u0"] + unit["u1"]  # direction of the mean of the unit vectors
    pairs = [(avg, emb["u4"]), (emb["u2"], emb["u5"]), (avg, emb["u5"]), (emb["u3"], emb["u4"])]
    ref = [cosine_similarity([a], [b])[0, 0] for a, b in pairs]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    # PLDA: averaging happens in its scoring space; single enrollments equal score()
    spk = np.arange(6) % 3
    plda = PLDABackend(lda_dim=2).fit(np.stack(list(emb.values())), spk)
    s = score_trials(plda, emb, trials)
    assert s[1] == pytest.approx(plda.score(emb["u2"], emb["u5"])[0])
    avg_t = plda.transform(np.stack([emb["u0"], emb["u1"]])).mean(0, keepdims=True)
    assert s[0] == pytest.approx(plda.score_pairs(avg_t, plda.transform(emb["u4"]))[0])
    with pytest.raises(BackendError, match="'u9'"):
        score_trials(cos, emb, pd.DataFrame({"enroll": ["u9"], "test": ["u0"], "label": [1]}))


def _clustered(rng, n_spk, n_utt, d=16, spread=0.05):
    centres = rng.normal(size=(n_spk, d))
    x = np.repeat(centres, n_utt, 0) + spread * rng.normal(size=(n_spk * n_utt, d))
    return x, np.repeat(np.arange(n_spk), n_utt)


def _all_trials(spk):
    i, j = np.triu_indices(len(spk), 1)
    return pd.DataFrame({"enroll": [f"u{k}" for k in i], "test": [f"u{k}" for k in j],
                         "label": (spk[i] == spk[j]).astype(int)})


def test_asnorm_matches_brute_force_and_keeps_separable_trials_separable():
    rng = np.random.default_rng(2)
    x, spk = _clustered(rng, 8, 4)
    cohort, _ = _clustered(rng, 30, 1)
    emb = {f"u{k}": v for k, v in enumerate(x)}
    trials = _all_trials(spk)
    plda = PLDABackend(lda_dim=6).fit(*_clustered(rng, 40, 5))
    for backend in (CosineBackend().fit(cohort), plda):
        raw = score_trials(backend, emb, trials)
        assert eer(raw, trials["label"])[0] == 0.0  # separable before
        norm = ASNorm(backend, cohort, top_n=10)
        got = score_trials(backend, emb, trials, asnorm=norm)
        assert eer(got, trials["label"])[0] == 0.0  # ... and after AS-norm
        # independent per-trial reference: sort each side's cohort scores, keep the top 10
        c_t = backend.transform(cohort)
        e = backend.transform(np.stack([emb[u] for u in trials["enroll"]]))
        t = backend.transform(np.stack([emb[u] for u in trials["test"]]))
        se = np.sort(backend.score_matrix(e, c_t), axis=1)[:, -10:]
        st = np.sort(backend.score_matrix(t, c_t), axis=1)[:, -10:]
        ref = 0.5 * ((raw - se.mean(1)) / se.std(1) + (raw - st.mean(1)) / st.std(1))
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(BackendError, match="top_n"):
        ASNorm(CosineBackend().fit(cohort), cohort, top_n=1)


def _check_png(path, min_side=200):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    assert img[..., :3].std() > 0.01  # something was drawn


def test_det_and_tsne_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(3)
    lab = (rng.random(2000) < 0.5).astype(int)
    systems = {"good": (rng.normal(size=2000) + 3 * lab, lab),
               "weak": (rng.normal(size=2000) + lab, lab)}
    det = plot_det(systems, tmp_path / "det.png")
    _check_png(det)
    x, spk = _clustered(rng, 5, 10, spread=0.3)
    tsne = plot_tsne(x, np.array([f"spk{s}" for s in spk]), tmp_path / "sub" / "tsne.png")
    _check_png(tsne)
