"""Per-epoch validation: embed held-out speakers, score the trial list with cosine and PLDA.

Features of the validation utterances (and of the training sample the PLDA is fitted on) do
not change between epochs, so they are computed once and cached; only the encoder runs each
epoch. Loading and embedding are ``scoring.embed``'s (the one embedding path, shared with
``scoring.evaluate``): whole utterances, or centred crops of at most
``trainer.val_max_seconds`` (see ``config.DEFAULTS`` for why that cap is on by default), long
ones chunked and averaged, and batches of equal lengths only, so an utterance's embedding does
not depend on which others share its batch (or worker).

A backend that fails to fit or score (e.g. PLDA when every speaker has one embedding) reports
NaN metrics and a one-line reason in ``ValidationResult.errors``; the epoch goes on with the
other backend. ``val_eer`` is the named backend's dev EER only (NaN when it failed: no silent
switch to the other), with its 95% bootstrap CI over enrollment speakers
(``val_eer_low``/``val_eer_high``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from speakertune.metric_keys import VAL_BACKENDS
from speakertune.ranking import ranked_backend
from speakertune.registry import BACKENDS
from speakertune.scoring import embed, metrics
from speakertune.scoring.backends import enroll_ids, score_trials

log = logging.getLogger(__name__)
P_TARGET = metrics.P_TARGET
EvalFeatures = embed.Features  # utt -> [frames, dims] features, and utt -> skip reason
_reported: set[str] = set()  # backend failure reasons already logged by this process


def load_eval_features(
    df: pd.DataFrame,
    cfg: dict[str, Any],
    *,
    storage_options: dict[str, Any] | None = None,
    max_seconds: float | None = None,
) -> EvalFeatures:
    """Decode and featurise every row of ``df`` (no augmentation), centre-cropped to at most
    ``max_seconds`` (None: whole utterances). Failures are kept, not raised: the caller
    counts and reports them.

    Example: ``load_eval_features(val_df, cfg, max_seconds=6.0).feats["u1"]`` -> [<= 600, 80].
    """
    return embed.load_features(df, cfg, max_seconds=max_seconds, storage_options=storage_options)


def embed_features(
    encoder: torch.nn.Module,
    feats: dict[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Embeddings (float32 numpy) of cached features, by ``scoring.embed.embed_features``.

    Example: ``embed_features(enc, {"u1": randn(600, 80)})`` -> ``{"u1": ndarray [D]}``.
    """
    return embed.embed_features(encoder, feats, batch_size=batch_size, device=device,
                                autocast=autocast)


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


def _one_backend(name: str, opts: dict[str, Any], x: np.ndarray, spk: np.ndarray,
                 val_emb: dict[str, np.ndarray], kept: pd.DataFrame,
                 labels: np.ndarray) -> tuple[Any, np.ndarray, float, float]:
    backend = BACKENDS.build({"name": name, **opts}).fit(x, spk)
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
            backend, s, eer, dcf = _one_backend(name, dict(backend_cfg.get(name) or {}), x, spk,
                                                val_emb, kept, labels)
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
        from speakertune.config import ConfigError

        hint = " (the best-of choice was removed: name one)" if val_backend == "best" else ""
        raise ConfigError(f"{key}: {val_backend!r} is not {' or '.join(VAL_BACKENDS)}{hint}")
