"""EER / minDCF against scikit-learn's ROC curve and closed forms; identification top-k."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_curve, top_k_accuracy_score
from speakertune.scoring import metrics as M


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Independent reference: where the ROC's miss and false-alarm rates cross (linear
    interpolation between the two ROC points around the crossing)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    d = fnr - fpr
    i = int(np.flatnonzero(d <= 0)[0])
    a = d[i - 1] / (d[i - 1] - d[i])
    return fpr[i - 1] + a * (fpr[i] - fpr[i - 1])


def sklearn_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    dcf = c_miss * p * (1 - tpr) + c_fa * (1 - p) * fpr
    return dcf.min() / min(c_miss * p, c_fa * (1 - p))


def brute_dcf_at(scores, labels, thr, p, c_miss=1.0, c_fa=1.0) -> float:
    accept = scores >= thr
    p_miss = np.mean(~accept[labels == 1])
    p_fa = np.mean(accept[labels == 0])
    return (c_miss * p * p_miss + c_fa * (1 - p) * p_fa) / min(c_miss * p, c_fa * (1 - p))


def _trials(seed: int, n: int, tied: bool):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 1.5 * labels
    if tied:  # a coarse grid: many target/non-target ties at the same score
        scores = np.round(scores * 2) / 2
    return scores, labels


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed,n", [(0, 7), (1, 200), (2, 5000)])
def test_eer_and_min_dcf_match_sklearn(seed, n, tied):
    scores, labels = _trials(seed, n, tied)
    e, thr = M.eer(scores, labels)
    assert e == pytest.approx(sklearn_eer(scores, labels), abs=1e-6)
    assert -np.inf < thr <= scores.max()
    for p, cm, cf in [(0.01, 1, 1), (0.001, 1, 1), (0.05, 10, 1), (0.5, 1, 3)]:
        dcf, dthr = M.min_dcf(scores, labels, p, cm, cf)
        assert dcf == pytest.approx(sklearn_min_dcf(scores, labels, p, cm, cf), abs=1e-6)
        # the returned threshold really reaches the minimum (accept when score >= thr)
        assert brute_dcf_at(scores, labels, dthr, p, cm, cf) == pytest.approx(dcf, abs=1e-9)


def test_report_agrees_with_single_calls():
    scores, labels = _trials(3, 1000, tied=False)
    rep = M.verification_report(scores, labels)
    assert rep["eer"] == M.eer(scores, labels)[0]
    assert rep["min_dcf_0.01"] == M.min_dcf(scores, labels, 0.01)[0]
    assert rep["min_dcf_0.001"] == M.min_dcf(scores, labels, 0.001)[0]


def test_eer_closed_forms():
    rng = np.random.default_rng(4)
    n, d = 200_000, 2.0
    labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
    scores = np.r_[rng.normal(d, 1, n), rng.normal(0, 1, n)]
    # equal-variance Gaussians cross at d/2: EER = Phi(-d/2)
    assert M.eer(scores, labels)[0] == pytest.approx(norm.cdf(-d / 2), abs=3e-3)
    # separable -> 0 with a threshold between the classes; all tied -> 0.5
    sep = np.r_[np.full(5, 2.0), np.full(5, 1.0)]
    lab = np.r_[np.ones(5), np.zeros(5)].astype(int)
    e, thr = M.eer(sep, lab)
    assert e == 0.0 and 1.0 < thr <= 2.0
    assert M.min_dcf(sep, lab, 0.01)[0] == 0.0
    assert M.eer(np.zeros(10), lab)[0] == pytest.approx(0.5)
    # scores are invariant to a monotone transform
    sub = rng.choice(2 * n, 1000, replace=False)
    assert M.eer(np.exp(scores[sub]), labels[sub])[0] == M.eer(scores[sub], labels[sub])[0]


@pytest.mark.parametrize(
    "scores,labels,msg",
    [
        ([0.1, 0.2], [1, 1], "both target"),
        ([0.1, np.nan], [1, 0], "non-finite"),
        ([0.1, 0.2, 0.3], [1, 0], "labels has 2"),
        ([0.1, 0.2], [1, 2], "0/1"),
    ],
)
def test_bad_input_is_a_clear_error(scores, labels, msg):
    with pytest.raises(M.MetricError, match=msg):
        M.eer(scores, labels)
    with pytest.raises(M.MetricError, match="p_target"):
        M.min_dcf([0.1, 0.2], [0, 1], 1.5)


def test_identification_accuracy_matches_sklearn():
    rng = np.random.default_rng(5)
    n, c = 300, 12
    labels = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), labels] += 1.0
    acc = M.identification_accuracy(scores, labels, ks=(1, 5))
    for k in (1, 5):
        ref = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(c))
        assert acc[k] == pytest.approx(ref)
    assert 0.0 < acc[1] < acc[5] < 1.0
    # ties count against the system: all-equal scores are never a top-1 hit
    assert M.identification_accuracy(np.zeros((4, 3)), [0, 1, 2, 0], ks=(1,))[1] == 0.0


def _gauss_trials(rng, n: int, mu: float):
    s = np.r_[rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)]
    return s, np.r_[np.ones(n, int), np.zeros(n, int)]


def test_bootstrap_ci_covers_the_true_eer_and_narrows_like_one_over_sqrt_n():
    """Independent check: target N(mu, 1) vs non-target N(0, 1) has EER Phi(-mu/2) exactly."""
    from scipy.stats import norm
    from speakertune.scoring.metrics import bootstrap_ci

    mu = 2 * norm.isf(0.05)  # true EER 5%
    true = norm.cdf(-mu / 2)
    rng = np.random.default_rng(0)
    reps, covered, widths = 200, 0, {1000: [], 4000: []}
    for k in range(reps):
        s, lab = _gauss_trials(rng, 1000, mu)
        r = bootstrap_ci(s, lab, n_boot=200, seed=k, p_target=None)
        covered += r["eer_low"] <= true <= r["eer_high"]
        widths[1000].append(r["eer_high"] - r["eer_low"])
    for k in range(20):
        s, lab = _gauss_trials(rng, 4000, mu)
        r = bootstrap_ci(s, lab, n_boot=200, seed=k, p_target=None)
        widths[4000].append(r["eer_high"] - r["eer_low"])
    assert 0.90 <= covered / reps <= 0.99, covered / reps
    ratio = np.mean(widths[1000]) / np.mean(widths[4000])
    assert 1.7 < ratio < 2.3, ratio  # 4x the trials: half the width
    # the binomial half-width at 5% EER and 1,000 trials a class is ~1.35% (pooled classes
    # halve the variance of each rate: bootstrap width should be close to it, not far off)
    assert 0.008 < np.mean(widths[1000]) / 2 < 0.016


def test_bootstrap_ci_over_speakers_is_wider_when_speakers_differ():
    """Trials of one enrollment speaker share an offset: resampling trials ignores that and
    under-covers; resampling speakers covers."""
    from scipy.stats import norm
    from speakertune.scoring.metrics import bootstrap_ci

    mu, n_spk, per = 2 * norm.isf(0.05), 40, 50
    rng = np.random.default_rng(1)
    hit_trial = hit_spk = 0
    reps = 60
    for k in range(reps):
        spk = np.repeat(np.arange(n_spk), per)
        offset = rng.normal(0, 0.8, n_spk)[spk]  # a speaker-level effect on every score
        lab = np.tile(np.r_[np.ones(per // 2, int), np.zeros(per // 2, int)], n_spk)
        s = rng.normal(0, 1, spk.size) + mu * lab + offset
        # true EER of the mixture: target N(mu, 1 + .64) vs non-target N(0, 1 + .64)
        true = norm.cdf(-mu / 2 / np.sqrt(1 + 0.64))
        a = bootstrap_ci(s, lab, n_boot=200, seed=k, p_target=None)
        b = bootstrap_ci(s, lab, spk, n_boot=200, seed=k, p_target=None)
        hit_trial += a["eer_low"] <= true <= a["eer_high"]
        hit_spk += b["eer_low"] <= true <= b["eer_high"]
        assert b["eer_high"] - b["eer_low"] > 0
    assert hit_spk / reps >= 0.85 and hit_spk >= hit_trial, (hit_spk, hit_trial)


def test_bootstrap_ci_is_fast_on_20k_trials_and_has_min_dcf():
    import time

    from speakertune.scoring.metrics import bootstrap_ci, verification_report

    s, lab = _gauss_trials(np.random.default_rng(2), 10_000, 4.1)
    t0 = time.perf_counter()
    r = bootstrap_ci(s, lab, np.arange(lab.size) % 500)
    assert time.perf_counter() - t0 < 4.0  # ~1 s on one core; slack for a shared CI machine
    rep = verification_report(s, lab, (0.01,))
    assert r["eer"] == rep["eer"] and r["min_dcf"] == rep["min_dcf_0.01"]
    assert r["eer_low"] < r["eer"] < r["eer_high"]
    assert r["min_dcf_low"] <= r["min_dcf"] <= r["min_dcf_high"]
