"""Per-epoch validation: embed held-out speakers, score the trial list with cosine and PLDA.

Features of the validation utterances (and of the training sample the PLDA is fitted on) do
not change between epochs, so they are computed once and cached; only the encoder runs each
epoch. Every utterance is cropped (centred) to a whole number of ``bucket`` frames so that
utterances of equal cropped length batch together without padding, and an utterance's
embedding does not depend on which others share its batch (or worker).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from speakertune.registry import BACKENDS
from speakertune.scoring import metrics
from speakertune.scoring.backends import score_trials

log = logging.getLogger(__name__)
P_TARGET = 0.01


@dataclass
class EvalFeatures:
    feats: dict[str, torch.Tensor] = field(default_factory=dict)  # utt -> [frames, dims]
    skipped: dict[str, str] = field(default_factory=dict)  # utt -> reason


def crop_frames(n: int, bucket: int, max_frames: int | None) -> int:
    """Frames kept from an utterance of ``n`` frames (a multiple of ``bucket`` when possible)."""
    if max_frames:
        n = min(n, max_frames)
    return n if n < bucket else n - n % bucket


def load_eval_features(
    df: pd.DataFrame,
    cfg: dict[str, Any],
    *,
    storage_options: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    bucket: int = 50,
) -> EvalFeatures:
    """Decode and featurise every row of ``df`` (no augmentation). Failures are kept, not raised:
    the caller counts and reports them."""
    from speakertune.data.audio import load_audio
    from speakertune.data.errors import DataError
    from speakertune.frontend.pipeline import extract_features

    sr = int(cfg["data"].get("sample_rate", 16000))
    shift_ms = float(cfg["features"].get("frame_shift", 10.0))
    max_frames = int(max_seconds * 1000 / shift_ms) if max_seconds else None
    out = EvalFeatures()
    for utt, uri in zip(df["utt"].astype(str), df["uri"].astype(str)):
        try:
            feats = torch.as_tensor(extract_features(load_audio(uri, sr, storage_options), cfg))
        except (DataError, ValueError) as exc:  # AudioError / FeatureError are ValueErrors
            out.skipped[utt] = str(exc).splitlines()[0]
            continue
        keep = crop_frames(feats.shape[0], bucket, max_frames)
        start = (feats.shape[0] - keep) // 2
        out.feats[utt] = feats[start : start + keep].float().contiguous()
    return out


@torch.no_grad()
def embed_features(
    encoder: torch.nn.Module,
    feats: dict[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Embeddings (float32 numpy) of cached features, batching utterances of equal length."""
    import contextlib

    was_training = encoder.training
    encoder.eval()
    by_len: dict[int, list[str]] = {}
    for utt, f in feats.items():
        by_len.setdefault(int(f.shape[0]), []).append(utt)
    out: dict[str, np.ndarray] = {}
    try:
        for n in sorted(by_len):
            utts = sorted(by_len[n])
            for i in range(0, len(utts), batch_size):
                chunk = utts[i : i + batch_size]
                x = torch.stack([feats[u] for u in chunk]).to(device)
                with autocast if autocast is not None else contextlib.nullcontext():
                    emb = encoder(x)
                emb = emb.float().cpu().numpy()
                out.update(zip(chunk, emb))
    finally:
        encoder.train(was_training)
    return out


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    backends: dict[str, Any]  # name -> fitted backend
    scores: dict[str, np.ndarray]  # name -> trial scores
    labels: np.ndarray
    dropped_trials: int


def usable_trials(trials: pd.DataFrame, known: set[str]) -> pd.DataFrame:
    from speakertune.scoring.backends import enroll_ids

    ok = trials["test"].astype(str).isin(known) & trials["enroll"].astype(str).map(
        lambda e: all(u in known for u in enroll_ids(e))
    )
    return trials[ok]


def score_backends(
    train_emb: dict[str, np.ndarray],
    train_spk: dict[str, str],
    val_emb: dict[str, np.ndarray],
    trials: pd.DataFrame,
    backend_cfg: dict[str, Any],
    val_backend: str = "best",
) -> ValidationResult:
    """Fit cosine (mean) and PLDA on training embeddings; EER and minDCF of each on ``trials``."""
    kept = usable_trials(trials, set(val_emb))
    dropped = len(trials) - len(kept)
    if dropped:
        log.warning("validation: %d of %d trials dropped (utterances not decodable)", dropped,
                    len(trials))
    labels = kept["label"].to_numpy(dtype=np.int64)
    utts = sorted(train_emb)
    x = np.stack([train_emb[u] for u in utts]).astype(np.float64)
    spk = np.asarray([train_spk[u] for u in utts])
    out: dict[str, float] = {}
    fitted: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for name in ("cosine", "plda"):
        spec = {"name": name, **dict(backend_cfg.get(name) or {})}
        backend = BACKENDS.build(spec).fit(x, spk)
        s = score_trials(backend, val_emb, kept)
        rates = metrics.error_rates(s, labels)
        out[f"val_eer_{name}"] = metrics.eer_from_rates(*rates)[0]
        out[f"val_min_dcf_{name}"] = metrics.min_dcf_from_rates(*rates, P_TARGET)[0]
        fitted[name], scores[name] = backend, s
    if val_backend == "best":
        out["val_eer"] = min(out["val_eer_cosine"], out["val_eer_plda"])
    elif val_backend in ("cosine", "plda"):
        out["val_eer"] = out[f"val_eer_{val_backend}"]
    else:
        from speakertune.config import ConfigError

        raise ConfigError(f"trainer.val_backend: {val_backend!r} is not best, cosine or plda")
    return ValidationResult(out, fitted, scores, labels, dropped)
