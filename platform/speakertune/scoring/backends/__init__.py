"""Scoring backends (registered in ``BACKENDS``) and trial-list scoring.

Importing this package registers every backend, which is what ``registry.load_all()`` needs.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from speakertune.scoring.backends import cosine, plda  # noqa: F401  (registers the backends)
from speakertune.scoring.backends.asnorm import ASNorm
from speakertune.scoring.backends.base import Backend, BackendError
from speakertune.scoring.backends.cosine import CosineBackend
from speakertune.scoring.backends.plda import PLDABackend

__all__ = [
    "ASNorm",
    "Backend",
    "BackendError",
    "CosineBackend",
    "PLDABackend",
    "enroll_ids",
    "score_trials",
]

_SEP = re.compile(r"[,;\s]+")


def enroll_ids(enroll: str) -> list[str]:
    """An enrollment entry may list several utterances ("u1,u2"): they are averaged."""
    return [u for u in _SEP.split(str(enroll).strip()) if u]


def score_trials(
    backend: Backend,
    emb_by_utt: dict[str, np.ndarray],
    trials_df: pd.DataFrame,
    asnorm: ASNorm | None = None,
) -> np.ndarray:
    """Score every trial (``enroll``, ``test`` columns), in the order of ``trials_df``.

    Each distinct enrollment and test utterance is transformed once; multi-utterance
    enrollments are averaged in the backend's scoring space.
    """
    for col in ("enroll", "test"):
        if col not in trials_df.columns:
            raise BackendError(f"trials have no column {col!r}")
    enrolls = pd.unique(trials_df["enroll"].astype(str))
    tests = pd.unique(trials_df["test"].astype(str))
    needed = {u for e in enrolls for u in enroll_ids(e)} | set(tests)
    missing = sorted(needed - emb_by_utt.keys())
    if missing:
        raise BackendError(
            f"{len(missing)} trial utterances have no embedding (first: {missing[0]!r}); "
            "drop those trials first"
        )
    utts = sorted(needed)
    pos = {u: i for i, u in enumerate(utts)}
    space = backend.transform(np.stack([emb_by_utt[u] for u in utts]))
    enroll_vecs = np.stack(
        [backend.combine(space[[pos[u] for u in enroll_ids(e)]]) for e in enrolls]
    )
    test_vecs = space[[pos[u] for u in tests]]
    e_idx = pd.Index(enrolls).get_indexer(trials_df["enroll"].astype(str))
    t_idx = pd.Index(tests).get_indexer(trials_df["test"].astype(str))
    scores = backend.score_indexed(enroll_vecs, test_vecs, e_idx, t_idx)
    if asnorm is not None:
        e_mean, e_std = asnorm.stats(enroll_vecs)
        t_mean, t_std = asnorm.stats(test_vecs)
        scores = asnorm.normalize(
            scores, (e_mean[e_idx], e_std[e_idx]), (t_mean[t_idx], t_std[t_idx])
        )
    return scores
