"""The one verification-scoring core: fit backends by name, keep the trials whose utterances
all have embeddings, and score them per backend (EER, minDCF, and the ranking backend's EER with
its 95% bootstrap CI). Per-epoch validation, ``evaluate``, fine-tuning's reports and the export
parity check all score through here.

A backend that fails to fit or score (e.g. PLDA when every speaker has one embedding) reports
NaN metrics and a one-line reason in ``ValidationResult.errors``; the epoch goes on with the
other backend. ``val_eer`` is the named backend's dev EER only (NaN when it failed: no silent
switch to the other), with its 95% bootstrap CI over enrollment speakers
(``val_eer_low``/``val_eer_high``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from speakertune.config import ConfigError
from speakertune.metric_keys import VAL_BACKENDS
from speakertune.ranking import ranked_backend
from speakertune.registry import BACKENDS
from speakertune.scoring import metrics
from speakertune.scoring.backends import Backend, enroll_ids, score_trials

log = logging.getLogger(__name__)
P_TARGET = metrics.P_TARGET
_reported: set[str] = set()  # backend failure reasons already logged by this process


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    backends: dict[str, Any]  # name -> fitted backend (only those that worked)
    scores: dict[str, np.ndarray]  # name -> trial scores (only those that worked)
    labels: np.ndarray
    dropped_trials: int
    errors: dict[str, str] = field(default_factory=dict)  # name -> why that backend failed
    ranked_backend: str | None = None  # the backend ``val_eer`` comes from


def usable_trials(trials: pd.DataFrame, known: set[str]) -> pd.DataFrame:
    """Trials whose enrollment and test utterances all have embeddings."""
    ok = trials["test"].astype(str).isin(known) & trials["enroll"].astype(str).map(
        lambda e: all(u in known for u in enroll_ids(e))
    )
    return trials[ok]


def fit_backends(
    names: Sequence[str], emb: np.ndarray, spk: np.ndarray, cfg: dict[str, Any] | None = None
) -> dict[str, Backend]:
    """Build each named backend with its options from ``cfg["backend"][name]`` and fit it.

    Example: ``fit_backends(["plda"], emb [n, D], spk [n], cfg)`` -> ``{"plda": PLDABackend}``.
    """
    opts = (cfg or {}).get("backend", {}) or {}
    return {n: BACKENDS.build({"name": n, **(opts.get(n) or {})}).fit(emb, spk) for n in names}


def _one_backend(name: str, backend_cfg: dict[str, Any], x: np.ndarray, spk: np.ndarray,
                 val_emb: dict[str, np.ndarray], kept: pd.DataFrame,
                 labels: np.ndarray) -> tuple[Any, np.ndarray, float, float]:
    backend = fit_backends([name], x, spk, {"backend": backend_cfg})[name]
    s = score_trials(backend, val_emb, kept)
    rates = metrics.error_rates(s, labels)
    return (backend, s, metrics.eer_from_rates(*rates)[0],
            metrics.min_dcf_from_rates(*rates, P_TARGET)[0])


def score_backends(
    train_emb: dict[str, np.ndarray],
    train_spk: dict[str, str],
    val_emb: dict[str, np.ndarray],
    trials: pd.DataFrame,
    backend_cfg: dict[str, Any],
    val_backend: str = "cosine",
    val_spk: dict[str, str] | None = None,
) -> ValidationResult:
    """Fit cosine (mean) and PLDA on training embeddings; EER and minDCF of each on ``trials``;
    ``val_eer`` is ``val_backend``'s, with a 95% CI resampling the enrollment speakers of
    ``val_spk`` (utt -> speaker; without it, trials).

    Example: ``score_backends(train_emb, spk, val_emb, trials, cfg["backend"], "plda").metrics``
    -> ``{"val_eer_cosine": .07, "val_min_dcf_cosine": .5, "val_eer_plda": .04, ...,
    "val_eer": .04, "val_eer_low": .035, "val_eer_high": .046}``.
    """
    check_val_backend(val_backend)  # a bad trainer.val_backend is a config error, up front
    kept = usable_trials(trials, set(val_emb))
    dropped = len(trials) - len(kept)
    if dropped:
        log.warning("validation: %d of %d trials dropped (utterances not decodable)", dropped,
                    len(trials))
    labels = kept["label"].to_numpy(dtype=np.int64)
    utts = sorted(train_emb)
    x = np.stack([train_emb[u] for u in utts]).astype(np.float64)
    spk = np.asarray([train_spk[u] for u in utts])
    res = ValidationResult({}, {}, {}, labels, dropped)
    for name in VAL_BACKENDS:
        try:
            backend, s, eer, dcf = _one_backend(name, backend_cfg, x, spk, val_emb, kept,
                                                labels)
        except (ValueError, np.linalg.LinAlgError) as exc:  # project errors are ValueErrors
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            res.errors[name] = reason
            if f"{name}: {reason}" not in _reported:  # once per process, not every epoch
                _reported.add(f"{name}: {reason}")
                log.warning("validation: %s backend failed, its metrics are NaN: %s", name,
                            reason)
            eer = dcf = math.nan
        else:
            res.backends[name], res.scores[name] = backend, s
        res.metrics[f"val_eer_{name}"] = eer
        res.metrics[f"val_min_dcf_{name}"] = dcf
    res.ranked_backend = ranked_backend(res.metrics, val_backend)
    res.metrics["val_eer"] = res.metrics[f"val_eer_{val_backend}"]
    res.metrics["val_eer_low"], res.metrics["val_eer_high"] = (
        _eer_ci(res.scores[val_backend], labels, kept, val_spk) if res.ranked_backend
        else (math.nan, math.nan))
    return res


def _eer_ci(scores: np.ndarray, labels: np.ndarray, kept: pd.DataFrame,
            val_spk: dict[str, str] | None) -> tuple[float, float]:
    """95% bootstrap CI of the EER, resampling enrollment speakers when they are known."""
    groups = None
    if val_spk is not None:
        first = kept["enroll"].astype(str).map(lambda e: enroll_ids(e)[0])
        groups = first.map(lambda u: val_spk.get(u, u)).to_numpy()
    ci = metrics.bootstrap_ci(scores, labels, groups, n_boot=500, p_target=None)
    return ci["eer_low"], ci["eer_high"]


def check_val_backend(val_backend: str, key: str = "trainer.val_backend") -> None:
    """A ConfigError unless ``val_backend`` names one backend (``best`` is no longer allowed:
    ranking on the better of two per trial picks on dev noise)."""
    if val_backend not in VAL_BACKENDS:
        hint = " (the best-of choice was removed: name one)" if val_backend == "best" else ""
        raise ConfigError(f"{key}: {val_backend!r} is not {' or '.join(VAL_BACKENDS)}{hint}")
