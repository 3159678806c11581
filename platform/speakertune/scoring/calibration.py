"""Score calibration: raw trial scores -> log-likelihood ratios (LLRs), trained on dev trials.

A backend's scores rank trials but mean nothing in themselves; a calibrated LLR says how much
more likely the trial is under "same speaker" than "different speakers", so one threshold,
``log((1 - p) / p)`` (``metrics.bayes_threshold``), is the Bayes decision at any target prior p.

* **linear**: ``llr = a * score + b`` (BOSARIS / Brümmer). Fitted by prior-weighted logistic
  regression: targets weigh ``p / N_tar`` and non-targets ``(1 - p) / N_non``, with the prior
  log-odds ``logit(p)`` as a fixed offset, so the fit minimises Cllr at the effective prior
  ``p_target`` whatever the dev list's target proportion. Monotonic: EER and minDCF unchanged.
* **qmf** (quality measure function, as in the VoxCeleb systems of WeSpeaker): the same
  regression on ``[score, quality...]`` where the quality measures are per-trial side
  information, here log durations of the enrollment and test audio (min and max of the pair)
  and optionally embedding norms. Short audio gives less reliable scores, and a score-only
  calibration cannot know that; QMF re-ranks trials too, so it can lower EER and minDCF.

Dev trials train calibrations; test lists only report (``search.holdout``). ``best/`` carries a
linear calibration in ``calibration.json`` (``export_calibration``), which ``speakertune
verify`` / ``identify`` apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.data.storage import write_text
from speakertune.scoring import metrics

log = logging.getLogger(__name__)
P_TARGET = metrics.P_TARGET  # the prior decisions and the fit's weighting are for
FAR = 0.01  # the default false-accept rate of the "far" threshold
L2 = 1e-6  # keeps the fit finite when dev scores separate the classes perfectly
CALIBRATION_FILE = "calibration.json"


class CalibrationError(ValueError):
    """A calibration cannot be fitted, read or applied; the message names what is wrong."""


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def fit_logistic(
    x: np.ndarray, labels: np.ndarray, p_target: float = P_TARGET, l2: float = L2
) -> tuple[np.ndarray, float]:
    """Prior-weighted logistic regression: ``(w [k], b)`` such that ``x @ w + b`` are LLRs.

    Minimises ``sum_i c_i softplus(-y_i (x_i w + b + logit(p))) + l2/2 |w|^2`` (y = +-1,
    ``c_i`` = p/N_tar or (1-p)/N_non; the bias is not penalised) by Newton steps with
    backtracking: the problem is convex and has a handful of parameters.

    Example: ``fit_logistic(scores[:, None] [n, 1], labels [n])`` -> ``(array([a]), b)``.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(labels).ravel().astype(bool)
    if x.shape[0] != y.size or not np.all(np.isfinite(x)):
        raise CalibrationError(f"calibration: {x.shape[0]} feature rows (all finite?) for "
                               f"{y.size} labels")
    if y.all() or not y.any():
        raise CalibrationError("calibration: dev trials need both targets and non-targets")
    if not 0.0 < p_target < 1.0:
        raise CalibrationError(f"calibration: p_target must be in (0, 1), got {p_target}")
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    c = np.where(y, p_target / y.sum(), (1.0 - p_target) / (~y).sum())
    sign, offset = np.where(y, 1.0, -1.0), _logit(p_target)
    reg = np.r_[np.full(x.shape[1], l2), 0.0]

    def loss(theta: np.ndarray) -> float:
        z = xb @ theta + offset
        return float(c @ np.logaddexp(0.0, -sign * z) + 0.5 * reg @ theta**2)

    theta = np.zeros(xb.shape[1])
    f = loss(theta)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(xb @ theta + offset)))  # posterior of "target"
        grad = xb.T @ (c * (q - y)) + reg * theta
        hess = (xb * (c * q * (1.0 - q))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while (f_new := loss(theta - t * step)) > f and t > 1e-10:
            t *= 0.5
        if f_new > f:  # no descent left along the Newton direction: converged
            break
        theta, f = theta - t * step, f_new
        if np.abs(t * step).max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


@dataclass
class Calibration:
    """``llr = weights[0] * score + weights[1:] @ quality + bias``; ``quality`` names the
    quality measures (empty for linear calibration)."""

    weights: np.ndarray
    bias: float
    quality: tuple[str, ...] = ()
    p_target: float = P_TARGET

    @property
    def kind(self) -> str:
        return "qmf" if self.quality else "linear"

    def __call__(self, scores: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        """LLRs [n] of ``scores`` [n] (and ``quality`` [n, q] for QMF)."""
        x = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
        if self.quality:
            q = None if quality is None else np.asarray(quality, dtype=np.float64)
            if q is None or q.shape != (x.shape[0], len(self.quality)):
                raise CalibrationError(f"qmf calibration needs quality [{x.shape[0]}, "
                                       f"{len(self.quality)}] ({', '.join(self.quality)})")
            x = np.hstack([x, q])
        return x @ np.asarray(self.weights, dtype=np.float64) + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": [float(w) for w in self.weights],
                "bias": float(self.bias), "quality": list(self.quality),
                "p_target": self.p_target}


def fit_linear(scores: np.ndarray, labels: np.ndarray, p_target: float = P_TARGET) -> Calibration:
    """Linear calibration ``a * score + b`` of dev ``scores`` [n] with ``labels`` [n]."""
    w, b = fit_logistic(np.asarray(scores, dtype=np.float64)[:, None], labels, p_target)
    return Calibration(w, b, (), p_target)


def fit_qmf(scores: np.ndarray, quality: np.ndarray, labels: np.ndarray, names: Sequence[str],
            p_target: float = P_TARGET) -> Calibration:
    """Quality-aware calibration on ``[score, quality [n, q]]`` (``names``: q column names)."""
    q = np.asarray(quality, dtype=np.float64)
    x = np.hstack([np.asarray(scores, dtype=np.float64)[:, None], q])
    w, b = fit_logistic(x, labels, p_target)
    return Calibration(w, b, tuple(names), p_target)


def trial_quality(
    trials: pd.DataFrame,
    duration_by_utt: Mapping[str, float],
    norm_by_utt: Mapping[str, float] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Per-trial quality measures ``(names, [n, q])``: log seconds of the shorter and longer
    side (an enrollment of several utterances counts their total), and with ``norm_by_utt``
    the smaller and larger embedding norm (mean over an enrollment's utterances)."""
    from speakertune.scoring.backends import enroll_ids

    def side(value: Mapping[str, float], reduce: Any) -> tuple[np.ndarray, np.ndarray]:
        e = np.array([reduce([value[u] for u in enroll_ids(x)]) for x in trials["enroll"]])
        t = np.array([value[str(u)] for u in trials["test"]], dtype=np.float64)
        return np.minimum(e, t), np.maximum(e, t)

    try:
        d_min, d_max = side(duration_by_utt, sum)
        cols, names = [np.log(np.maximum(d_min, 1e-3)), np.log(np.maximum(d_max, 1e-3))], [
            "log_dur_min", "log_dur_max"]
        if norm_by_utt is not None:
            cols += list(side(norm_by_utt, np.mean))
            names += ["norm_min", "norm_max"]
    except KeyError as exc:
        raise CalibrationError(f"quality measures: no duration/norm for utterance {exc}") from None
    return names, np.stack(cols, axis=1)


def far_threshold(llr: np.ndarray, labels: np.ndarray, far: float = FAR) -> float:
    """The lowest LLR threshold at which at most ``far`` of the non-target ``llr`` are accepted
    (accept when ``llr > threshold``)."""
    if not 0.0 < far < 1.0:
        raise CalibrationError(f"far must be in (0, 1), got {far}")
    non = np.sort(np.asarray(llr, dtype=np.float64)[np.asarray(labels).ravel() == 0])[::-1]
    if non.size == 0:
        raise CalibrationError("far threshold: no non-target dev trials")
    return float(non[min(int(np.floor(far * non.size)), non.size - 1)])


def report(llr: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
           p_target: float = P_TARGET) -> dict[str, float]:
    """EER with its 95% bootstrap CI, minDCF, actDCF (at the Bayes threshold) and Cllr."""
    ci = metrics.bootstrap_ci(llr, labels, groups, p_target=p_target)
    return {"eer": ci["eer"], "low": ci["eer_low"], "high": ci["eer_high"],
            "min_dcf": ci["min_dcf"], "act_dcf": metrics.act_dcf(llr, labels, p_target),
            "cllr": metrics.cllr(llr, labels)}


def calibrated_reports(
    dev: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    names: Sequence[str],
    groups: np.ndarray | None = None,
    p_target: float = P_TARGET,
) -> dict[str, dict[str, float]]:
    """Calibrations fitted on ``dev`` = (scores, labels, quality) and applied to ``test``;
    ``{"raw" | "linear" | "qmf": report}`` on the test list (raw: scores taken as LLRs)."""
    (ds, dl, dq), (ts, tl, tq) = dev, test
    lin = fit_linear(ds, dl, p_target)
    qmf = fit_qmf(ds, dq, dl, names, p_target)
    return {"raw": report(ts, tl, groups, p_target),
            "linear": report(lin(ts), tl, groups, p_target),
            "qmf": report(qmf(ts, tq), tl, groups, p_target)}


def eval_reports(dev: Any, dev_utts: pd.DataFrame, test: Any, test_utts: pd.DataFrame,
                 groups: np.ndarray | None = None, p_target: float = P_TARGET
                 ) -> dict[str, dict[str, float]]:
    """``calibrated_reports`` of two ``scoring.evaluate.EvalResult``s of one checkpoint and
    backend: ``dev`` trains, ``test`` reports; quality measures are log durations from the
    manifests' ``duration_s`` (``dev_utts``, ``test_utts``)."""
    sides = []
    for res, utts in ((dev, dev_utts), (test, test_utts)):
        dur = dict(zip(utts["utt"].astype(str), utts["duration_s"].astype(float)))
        names, q = trial_quality(res.trials, dur)
        sides.append((res.scores[res.backend], res.trials["label"].to_numpy(), q))
    return calibrated_reports(sides[0], sides[1], names, groups, p_target)


def summary_line(reports: Mapping[str, Mapping[str, float]] | None) -> str:
    """`` ; actDCF raw/linear/qmf a/b/c, Cllr ...`` for a log line ('' without reports)."""
    if not reports:
        return ""
    sys = ("raw", "linear", "qmf")
    act = "/".join(f"{reports[k]['act_dcf']:.3f}" for k in sys)
    cl = "/".join(f"{reports[k]['cllr']:.3f}" for k in sys)
    return f"; actDCF raw/linear/qmf {act}, Cllr {cl}"


def results_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per (trial, test list) and calibration, EER [CI], minDCF, actDCF, Cllr
    of the test scores; [] when no row has calibrated reports."""
    rows = [r for r in rows if r.get("calibrated")]
    if not rows:
        return []
    p = P_TARGET  # what search.holdout trains and reports at
    lines = ["", "## Calibrated scores", "",
             f"Calibrations trained on each checkpoint's dev trials (prior-weighted logistic "
             f"regression at p_target={p:g}; qmf adds log durations of the shorter and longer "
             "side), applied to the test scores; raw takes the backend's scores as LLRs. "
             "actDCF decides at the Bayes threshold log((1-p)/p) = "
             f"{metrics.bayes_threshold(p):.2f}.",
             "", f"| dev rank | trial | test list | calibration | EER [95% CI] | minDCF({p:g}) | "
             f"actDCF({p:g}) | Cllr |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind, m in r["calibrated"].items():
            lines.append(f"| {r['rank']} | {r['trial']} | {r['test']} | {kind} | "
                         f"{100 * m['eer']:.2f}% [{100 * m['low']:.1f}, {100 * m['high']:.1f}] | "
                         f"{m['min_dcf']:.3f} | {m['act_dcf']:.3f} | {m['cllr']:.3f} |")
    return lines


def export_calibration(ckpt_dir: str | Path, p_target: float = P_TARGET, far: float = FAR
                       ) -> Path | None:
    """Write ``calibration.json`` into a checkpoint directory: the linear calibration fitted on
    its saved dev trial scores (``val_scores.npz``) of the backend it was ranked on, and two
    LLR thresholds: ``bayes`` at ``p_target`` and ``far`` (dev false-accept rate ``far``).
    None (and a warning) when the checkpoint has no usable dev scores."""
    import yaml

    from speakertune.checkpoint import VAL_SCORES, load_val_scores
    from speakertune.ranking import checkpoint_backend

    ckpt = Path(ckpt_dir)
    if not (ckpt / VAL_SCORES).is_file():
        log.warning("%s: no %s, so no calibration.json", ckpt, VAL_SCORES)
        return None
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text()) or {}
    mpath = ckpt / "metrics.json"
    backend, _ = checkpoint_backend(json.loads(mpath.read_text()) if mpath.is_file() else None,
                                    cfg)
    try:
        scores, labels = load_val_scores(str(ckpt), backend)
        cal = fit_linear(scores, labels, p_target)
    except ValueError as exc:  # e.g. no scores of that backend, or a one-class dev list
        log.warning("%s: no calibration.json (%s)", ckpt, str(exc).splitlines()[0])
        return None
    llr = cal(scores)
    blob = {
        "backend": backend, "a": float(cal.weights[0]), "b": cal.bias, **cal.to_dict(),
        "thresholds": {"bayes": metrics.bayes_threshold(p_target),
                       "far": far_threshold(llr, labels, far)},
        "far": far,
        # The dev scores came from validation's centred crops: verify embeds the same way.
        "max_seconds": (cfg.get("trainer") or {}).get("val_max_seconds"),
        "dev": {"trials": int(labels.size), "cllr": metrics.cllr(llr, labels),
                "act_dcf": metrics.act_dcf(llr, labels, p_target),
                "eer": metrics.eer(scores, labels)[0]},
    }
    path = ckpt / CALIBRATION_FILE
    write_text(path, json.dumps(blob, indent=2))
    return path


def load_calibration(model_dir: str | Path) -> dict[str, Any]:
    """``calibration.json`` of a model directory, checked; one-line error when absent."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise CalibrationError(f"{path}: no calibration (a sweep's best/ carries one; "
                               "scoring.calibration.export_calibration writes it)")
    try:
        blob = json.loads(path.read_text())
        blob["calibration"] = Calibration(np.asarray(blob["weights"], dtype=np.float64),
                                          float(blob["bias"]), tuple(blob.get("quality", ())),
                                          float(blob["p_target"]))
        _ = blob["backend"], blob["thresholds"]["bayes"], blob["thresholds"]["far"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"{path}: unreadable calibration ({exc!r})") from None
    return blob
