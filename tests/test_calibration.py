"""Calibration maths: actDCF and Cllr against independent references, the prior-weighted
logistic fit against scikit-learn, and QMF beating linear calibration when quality matters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.linear_model import LogisticRegression
from speakertune.scoring import calibration as cal
from speakertune.scoring.metrics import act_dcf, bayes_threshold, cllr, eer, min_dcf


def calibrated_gaussian(mu: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """LLRs of a perfectly calibrated Gaussian system: targets N(mu, 2 mu), non-targets
    N(-mu, 2 mu), taken at evenly spaced quantiles (a deterministic, near-exact sample)."""
    z = stats.norm.ppf((np.arange(n) + 0.5) / n)
    sd = math.sqrt(2 * mu)
    return np.r_[mu + sd * z, -mu + sd * z], np.r_[np.ones(n, int), np.zeros(n, int)]


def test_cllr_of_calibrated_gaussian_llrs_matches_numerical_integration():
    mu = 2.0
    llr, y = calibrated_gaussian(mu, 100_000)
    sd = math.sqrt(2 * mu)
    # Cllr = E_tar[log2(1 + e^-l)] (non-targets are symmetric), integrated by quadrature.
    ref = integrate.quad(lambda t: stats.norm.pdf(t, mu, sd) * np.logaddexp(0, -t) / math.log(2),
                         -40, 40)[0]
    assert cllr(llr, y) == pytest.approx(ref, abs=1e-4)
    assert cllr(np.zeros(6), np.array([1, 0, 1, 0, 0, 0])) == 1.0
    # A miscalibrated (scaled-up) version of the same scores costs more, at the same EER.
    assert cllr(4 * llr, y) > cllr(llr, y) + 0.1


def test_act_dcf_against_brute_force_and_min_dcf():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.3).astype(int)
    llr = np.where(y == 1, 3.0, -2.0) + 2 * rng.normal(size=y.size)
    for p, cm, cf in [(0.01, 1, 1), (0.05, 10, 1), (0.5, 1, 1)]:
        thr = math.log(cf * (1 - p) / (cm * p))
        cost = 0.0
        n_tar, n_non = y.sum(), (1 - y).sum()
        for s, t in zip(llr, y):  # one decision per trial
            if t == 1 and not s > thr:
                cost += cm * p / n_tar
            if t == 0 and s > thr:
                cost += cf * (1 - p) / n_non
        assert act_dcf(llr, y, p, cm, cf) == pytest.approx(cost / min(cm * p, cf * (1 - p)))
        assert act_dcf(llr, y, p, cm, cf) >= min_dcf(llr, y, p, cm, cf)[0] - 1e-12
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))


def _weights(y: np.ndarray, p: float) -> np.ndarray:
    return np.where(y == 1, p / y.sum(), (1 - p) / (y == 0).sum())


def _duration_shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores whose offset depends on the shorter side's duration (short audio: higher scores
    for targets and non-targets alike), with the 2 log-duration quality columns."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    d = np.exp(rng.uniform(np.log(0.5), np.log(30), size=(n, 2)))
    ld = np.log(np.sort(d, axis=1))
    s = 3.0 * y - 1.5 * ld[:, 0] + rng.normal(size=n)
    return s, y, ld


def test_logistic_fit_matches_scikit_learn_with_prior_weights():
    s, y, q = _duration_shifted(3000, 0)
    x = np.c_[s, q]
    for p in (0.01, 0.3):
        w, b = cal.fit_logistic(x, y, p, l2=1e-4)
        ref = LogisticRegression(C=1e4, tol=1e-12, max_iter=10_000).fit(x, y, _weights(y, p))
        assert np.allclose(w, ref.coef_[0], rtol=1e-5, atol=1e-6)
        # scikit-learn's intercept includes the prior log-odds; an LLR does not.
        assert b == pytest.approx(ref.intercept_[0] - math.log(p / (1 - p)), abs=1e-5)


def test_calibrated_llrs_stay_put_and_scaled_scores_are_undone():
    llr, y = calibrated_gaussian(2.0, 20_000)
    for p in (0.01, 0.5):
        c = cal.fit_linear(llr, y, p)  # already calibrated: the identity at every prior
        assert c.weights[0] == pytest.approx(1.0, abs=2e-3) and c.bias == pytest.approx(0, abs=5e-3)
    c = cal.fit_linear(0.25 * llr - 3.0, y)
    assert c.weights[0] == pytest.approx(4.0, rel=1e-2)
    assert cllr(c(0.25 * llr - 3.0), y) == pytest.approx(cllr(llr, y), abs=1e-3)


def test_qmf_beats_linear_when_scores_shift_with_duration():
    dev, test = _duration_shifted(2000, 1), _duration_shifted(2000, 2)
    names = ["log_dur_min", "log_dur_max"]
    out = cal.calibrated_reports((dev[0], dev[1], dev[2]), (test[0], test[1], test[2]), names,
                                 groups=None)
    lin, qmf = out["linear"], out["qmf"]
    assert qmf["cllr"] < lin["cllr"] - 0.05 and qmf["act_dcf"] < lin["act_dcf"]
    assert qmf["eer"] < lin["eer"]  # QMF re-ranks trials; linear cannot
    assert lin["eer"] == pytest.approx(out["raw"]["eer"])  # monotonic: same ranking
    assert lin["cllr"] < out["raw"]["cllr"]
    assert lin["low"] <= lin["eer"] <= lin["high"]


def test_far_threshold_holds_the_false_accept_rate():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(200, int), np.zeros(1000, int)]
    llr = np.r_[rng.normal(3, 1, 200), rng.normal(-3, 1, 1000)]
    thr = cal.far_threshold(llr, y, 0.01)
    assert np.mean(llr[y == 0] > thr) == pytest.approx(0.01, abs=1e-3)
    assert np.mean(llr[y == 0] >= thr) > 0.01  # the lowest such threshold


def test_bad_input_is_one_line():
    with pytest.raises(cal.CalibrationError, match="both targets and non-targets"):
        cal.fit_linear(np.ones(3), np.ones(3))
    with pytest.raises(cal.CalibrationError, match=r"quality \[2, 2\]"):
        cal.Calibration(np.ones(3), 0.0, ("a", "b"))(np.ones(2))
    assert eer(np.r_[0.0, 1.0], np.r_[0, 1])[0] == 0.0


def test_trial_quality_sums_enrollment_durations():
    import pandas as pd

    trials = pd.DataFrame({"enroll": ["a,b", "c"], "test": ["c", "a"], "label": [1, 0]})
    names, q = cal.trial_quality(trials, {"a": 1.0, "b": 2.0, "c": 4.0},
                                 {"a": 1.0, "b": 3.0, "c": 5.0})
    assert names == ["log_dur_min", "log_dur_max", "norm_min", "norm_max"]
    assert np.allclose(q, [[math.log(3), math.log(4), 2.0, 5.0], [0.0, math.log(4), 1.0, 5.0]])
    with pytest.raises(cal.CalibrationError, match="no duration/norm for utterance 'c'"):
        cal.trial_quality(trials, {"a": 1.0, "b": 2.0})
