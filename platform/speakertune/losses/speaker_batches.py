"""Batches of N speakers x M utterances, speaker-major, for the end-to-end losses."""

from __future__ import annotations

import numpy as np


class SpeakerBatcher:
    """Regroups streamed rows into N speakers x M utterances batches (speaker-major): rows of
    speaker 1, then of speaker 2...

    Training rows arrive as a stream (a Ray Data shard, no random access), so rows are pooled
    per speaker and a batch is cut as soon as N speakers have M rows each. The N speakers are
    drawn favouring those with the most complete groups pooled, which strands fewer rows at the
    end of an epoch than a uniform draw. Nothing is dropped silently: ``leftover()`` counts the
    rows no batch could take (including those of speakers with fewer than M rows).
    """

    def __init__(self, n_speakers: int, m_utts: int, rng: np.random.Generator) -> None:
        if n_speakers < 2 or m_utts < 2:
            raise ValueError(f"need n_speakers >= 2 and m_utts >= 2, got {n_speakers} x {m_utts}")
        self.n, self.m, self.rng = n_speakers, m_utts, rng
        self.pool: dict[int, list[np.ndarray]] = {}

    def add(self, feats: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Pool ``feats`` (one row per label) and return the batches now complete, each as
        ``(rows [N*M, ...], labels [N*M])``."""
        for f, y in zip(feats, labels):
            self.pool.setdefault(int(y), []).append(f)
        out = []
        while True:
            ready = sorted(k for k, v in self.pool.items() if len(v) >= self.m)
            if len(ready) < self.n:
                return out
            groups = np.array([len(self.pool[k]) // self.m for k in ready], dtype=float)
            picked = self.rng.choice(ready, size=self.n, replace=False, p=groups / groups.sum())
            rows, ys = [], []
            for k in picked:
                rows += [self.pool[int(k)].pop() for _ in range(self.m)]
                ys += [int(k)] * self.m
            out.append((np.stack(rows), np.asarray(ys, dtype=np.int64)))

    def leftover(self) -> int:
        """Rows pooled but not (yet) in any batch."""
        return sum(len(v) for v in self.pool.values())
