"""Batches of N speakers x M utterances, speaker-major, for the end-to-end losses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class SpeakerBatchSampler:
    """Yields lists of N*M row indices: utterances 0..M-1 of speaker 1, then of speaker 2...

    Each epoch every speaker's utterances are shuffled and cut into groups of M; batches draw
    N distinct speakers, favouring those with most groups left, until fewer than N speakers
    have groups. Nothing is dropped silently: ``skipped_speakers`` (fewer than M utterances)
    and ``unused_utterances`` (left over this epoch) are reported.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, n_speakers: int, m_utts: int,
                 seed: int = 0) -> None:
        if n_speakers < 2 or m_utts < 2:
            raise ValueError(f"need n_speakers >= 2 and m_utts >= 2, got {n_speakers} x {m_utts}")
        labels = np.asarray(labels)
        self.n, self.m, self.seed, self.epoch = n_speakers, m_utts, seed, 0
        speakers, inverse = np.unique(labels, return_inverse=True)
        by_spk = [np.flatnonzero(inverse == i) for i in range(len(speakers))]
        self._utts = {int(speakers[i]): idx for i, idx in enumerate(by_spk) if len(idx) >= m_utts}
        self.skipped_speakers = len(speakers) - len(self._utts)
        if len(self._utts) < n_speakers:
            raise ValueError(
                f"SpeakerBatchSampler: only {len(self._utts)} speakers have >= {m_utts} "
                f"utterances, fewer than n_speakers={n_speakers}"
            )
        self.unused_utterances = 0
        self._plan: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._plan = epoch, None

    def _make_plan(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups: dict[int, list[np.ndarray]] = {}
        for spk, idx in self._utts.items():
            perm = rng.permutation(idx)
            k = len(perm) // self.m
            groups[spk] = [perm[i * self.m:(i + 1) * self.m] for i in range(k)]
        batches = []
        while True:
            alive = [s for s, g in groups.items() if g]
            if len(alive) < self.n:
                break
            left = np.array([len(groups[s]) for s in alive], dtype=float)
            chosen = rng.choice(len(alive), size=self.n, replace=False, p=left / left.sum())
            batches.append([int(i) for c in chosen for i in groups[alive[c]].pop()])
        used = len(batches) * self.n * self.m
        self.unused_utterances = sum(len(i) for i in self._utts.values()) - used
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self._plan is None:
            self._plan = self._make_plan()
        yield from self._plan

    def __len__(self) -> int:
        if self._plan is None:
            self._plan = self._make_plan()
        return len(self._plan)
