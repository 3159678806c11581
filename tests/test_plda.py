"""PLDA: recovers a known two-covariance model, exact LLRs, beats cosine, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from speakertune.checkpoint import load_backend, save_backend
from speakertune.registry import BACKENDS
from speakertune.scoring.backends import BackendError, CosineBackend, PLDABackend
from speakertune.scoring.metrics import eer


def _spd(rng, d, scale):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def sample_two_cov(rng, b, w, n_spk, n_utt, mu=None):
    d = b.shape[0]
    mu = np.zeros(d) if mu is None else mu
    y = rng.multivariate_normal(mu, b, size=n_spk)
    x = np.repeat(y, n_utt, axis=0) + rng.multivariate_normal(np.zeros(d), w, n_spk * n_utt)
    return x, np.repeat(np.arange(n_spk), n_utt)


def _raw_plda(**kw):
    return PLDABackend(lda_dim=None, whiten=False, length_norm=False, center=False, **kw)


def test_em_recovers_known_covariances():
    rng = np.random.default_rng(0)
    d = 5
    b, w = _spd(rng, d, 2.0), _spd(rng, d, 0.5)
    mu = rng.normal(size=d)
    # uneven utterance counts exercise the per-count grouping of the E-step
    x1, s1 = sample_two_cov(rng, b, w, 1200, 8, mu)
    x2, s2 = sample_two_cov(rng, b, w, 800, 3, mu)
    x, spk = np.r_[x1, x2], np.r_[s1, s2 + 10_000]
    p = _raw_plda(em_iters=20).fit(x, spk)
    rel = lambda est, true: np.linalg.norm(est - true) / np.linalg.norm(true)  # noqa: E731
    assert rel(p.between, b) < 0.10
    assert rel(p.within, w) < 0.10
    assert np.linalg.norm(p.mu - mu) < 0.15 * np.linalg.norm(mu) + 0.1


def test_llr_is_the_exact_gaussian_likelihood_ratio():
    rng = np.random.default_rng(1)
    d = 4
    b, w = _spd(rng, d, 1.0), _spd(rng, d, 0.3)
    x, spk = sample_two_cov(rng, b, w, 50, 4)
    p = _raw_plda(em_iters=3).fit(x, spk)
    e, t = rng.normal(size=(6, d)), rng.normal(size=(6, d))
    tot, bb = p.between + p.within, p.between
    same = multivariate_normal(np.r_[p.mu, p.mu], np.block([[tot, bb], [bb, tot]]))
    diff = multivariate_normal(p.mu, tot)
    ref = [same.logpdf(np.r_[e[i], t[i]]) - diff.logpdf(e[i]) - diff.logpdf(t[i])
           for i in range(6)]
    np.testing.assert_allclose(p.score(e, t), ref, rtol=1e-8, atol=1e-8)
    # the matrix form agrees with the pairwise form
    np.testing.assert_allclose(
        np.diag(p.score_matrix(p.transform(e), p.transform(t))), p.score(e, t), atol=1e-9
    )


def _anisotropic_data(rng, n_spk, n_utt):
    """Speakers differ in a few directions while nuisance variance dominates the others:
    exactly what PLDA models and cosine cannot discount."""
    d = 20
    b = np.diag(np.r_[np.full(5, 1.0), np.full(15, 0.01)])
    w = np.diag(np.r_[np.full(5, 0.3), np.full(15, 2.0)])
    return sample_two_cov(rng, b, w, n_spk, n_utt, mu=np.full(d, 3.0))


def _pairs(rng, x, spk, n):
    i = rng.integers(0, len(x), n)
    same = rng.random(n) < 0.5
    j = np.where(same, np.array([rng.choice(np.flatnonzero(spk == spk[k])) for k in i]),
                 rng.integers(0, len(x), n))
    keep = i != j
    return x[i[keep]], x[j[keep]], (spk[i[keep]] == spk[j[keep]]).astype(int)


def test_plda_beats_cosine_on_two_covariance_data():
    rng = np.random.default_rng(2)
    x_tr, s_tr = _anisotropic_data(rng, 200, 10)
    x_te, s_te = _anisotropic_data(rng, 100, 6)
    e, t, lab = _pairs(rng, x_te, s_te, 3000)
    plda = BACKENDS.build({"name": "plda", "lda_dim": 10}).fit(x_tr, s_tr)
    cos = CosineBackend(mean_norm=True).fit(x_tr)
    eer_plda, eer_cos = eer(plda.score(e, t), lab)[0], eer(cos.score(e, t), lab)[0]
    assert eer_plda < 0.8 * eer_cos, (eer_plda, eer_cos)


def test_state_round_trips_to_identical_scores(tmp_path):
    rng = np.random.default_rng(3)
    x, spk = _anisotropic_data(rng, 30, 5)
    p = PLDABackend(lda_dim=8).fit(x, spk)
    path = tmp_path / "backend_plda.npz"
    save_backend(p, path)
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert all(data[k].dtype != object for k in data.files)
    q = load_backend("plda", path)
    e, t = rng.normal(size=(50, 20)), rng.normal(size=(50, 20))
    np.testing.assert_array_equal(q.score(e, t), p.score(e, t))
    assert q.proj.shape == (20, 8)


def test_lda_dimension_is_clipped_and_errors_are_clear():
    rng = np.random.default_rng(4)
    x, spk = _anisotropic_data(rng, 6, 4)
    p = PLDABackend(lda_dim=128).fit(x, spk)
    assert p.proj.shape == (20, 5)  # n_speakers - 1
    assert np.isfinite(p.score(x[:3], x[3:6])).all()
    with pytest.raises(BackendError, match="at least 2 speakers"):
        PLDABackend().fit(x[:4], np.zeros(4))
    with pytest.raises(BackendError, match="single embedding"):
        PLDABackend().fit(x[:6], np.arange(6))
    # collapsed embeddings (an untrained or diverged encoder) still give finite scores
    flat = PLDABackend().fit(np.ones_like(x), spk)
    assert np.isfinite(flat.score(x[:3], x[3:6])).all()
    with pytest.raises(BackendError, match="dimension 20"):
        p.score(np.zeros((2, 7)), np.zeros((2, 7)))
    with pytest.raises(BackendError, match="fitted"):
        PLDABackend().score(x[:2], x[2:4])
