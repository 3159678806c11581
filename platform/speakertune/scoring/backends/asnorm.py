"""Adaptive symmetric score normalisation (AS-norm) with a top-N cohort.

Each side of a trial is scored against a cohort of impostor speakers; only its N closest
cohort scores are kept, and the trial score is standardised by both sides' statistics:
``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``.
"""

from __future__ import annotations

import numpy as np

from speakertune.scoring.backends.base import Backend, BackendError

_CHUNK = 2048  # rows per cohort score block, bounds memory to CHUNK x cohort floats


class ASNorm:
    def __init__(self, backend: Backend, cohort: np.ndarray, top_n: int = 300) -> None:
        """``cohort``: raw embeddings (one per cohort speaker is usual), not yet transformed."""
        cohort = backend.transform(cohort)
        if cohort.shape[0] < 2:
            raise BackendError(f"AS-norm needs at least 2 cohort embeddings, got {len(cohort)}")
        if top_n < 2:
            raise BackendError(f"AS-norm top_n must be >= 2, got {top_n}")
        self.backend = backend
        self.cohort = cohort
        self.top_n = min(int(top_n), cohort.shape[0])

    def stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the top-N cohort scores of each (transformed) row of ``x``."""
        mean = np.empty(x.shape[0])
        std = np.empty(x.shape[0])
        for start in range(0, x.shape[0], _CHUNK):
            s = self.backend.score_matrix(x[start : start + _CHUNK], self.cohort)
            top = np.partition(s, s.shape[1] - self.top_n, axis=1)[:, -self.top_n :]
            mean[start : start + _CHUNK] = top.mean(axis=1)
            std[start : start + _CHUNK] = top.std(axis=1)
        return mean, np.maximum(std, 1e-12)

    def normalize(
        self,
        scores: np.ndarray,
        enroll_stats: tuple[np.ndarray, np.ndarray],
        test_stats: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        (me, se), (mt, st) = enroll_stats, test_stats
        return 0.5 * ((scores - me) / se + (scores - mt) / st)
