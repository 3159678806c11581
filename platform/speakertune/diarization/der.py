"""Diarization error rate (NIST definition) with a forgiveness collar.

DER = (missed speech + false alarm + speaker confusion) / scored reference speech, where
hypothesis speakers are mapped one-to-one onto reference speakers so as to maximise their
overlap (Hungarian assignment). Times within ``collar`` seconds of any reference turn boundary
are not scored, since human boundary marks are only that precise.
Computed exactly on the elementary intervals between all boundaries (no frame grid).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from speakertune.diarization.rttm import Turn


@dataclass
class DERResult:
    """Error components in seconds, summed over files."""

    scored: float = 0.0  # reference speaker-time that is scored
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> hyp -> ref

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / max(self.scored, 1e-12)

    def as_dict(self) -> dict[str, float]:
        return {
            "der": self.der,
            "missed_s": self.missed,
            "false_alarm_s": self.false_alarm,
            "confusion_s": self.confusion,
            "scored_s": self.scored,
        }


def _activity(turns: Sequence[Turn], speakers: list[str], mids: np.ndarray) -> np.ndarray:
    """Boolean [intervals, speakers]: speaker talks at each interval midpoint."""
    act = np.zeros((len(mids), len(speakers)), dtype=bool)
    col = {s: i for i, s in enumerate(speakers)}
    for t in turns:
        act[:, col[t.speaker]] |= (mids >= t.start) & (mids < t.end)
    return act


def _file_errors(ref: Sequence[Turn], hyp: Sequence[Turn], collar: float) -> tuple:
    ref_bounds = np.array([b for t in ref for b in (t.start, t.end)])
    points = [ref_bounds, [b for t in hyp for b in (t.start, t.end)]]
    if collar > 0 and ref_bounds.size:
        points += [ref_bounds - collar, ref_bounds + collar]
    edges = np.unique(np.concatenate([np.asarray(p, dtype=float) for p in points]))
    if edges.size < 2:
        return 0.0, 0.0, 0.0, 0.0, {}
    mids, dur = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    if collar > 0 and ref_bounds.size:
        near = np.abs(mids[:, None] - ref_bounds[None, :]) < collar
        dur = np.where(near.any(axis=1), 0.0, dur)
    ref_spk = sorted({t.speaker for t in ref})
    hyp_spk = sorted({t.speaker for t in hyp})
    r_act, h_act = _activity(ref, ref_spk, mids), _activity(hyp, hyp_spk, mids)
    n_ref, n_hyp = r_act.sum(1), h_act.sum(1)
    # overlap[r, h] = scored time both talk; the mapping maximises the matched total.
    overlap = (r_act * dur[:, None]).T.astype(float) @ h_act.astype(float)
    rows, cols = linear_sum_assignment(overlap, maximize=True) if overlap.size else ([], [])
    n_correct = np.zeros(len(mids))
    for r, h in zip(rows, cols):
        n_correct += r_act[:, r] & h_act[:, h]
    scored = float((dur * n_ref).sum())
    missed = float((dur * np.maximum(n_ref - n_hyp, 0)).sum())
    false_alarm = float((dur * np.maximum(n_hyp - n_ref, 0)).sum())
    confusion = float((dur * (np.minimum(n_ref, n_hyp) - n_correct)).sum())
    mapping = {hyp_spk[h]: ref_spk[r] for r, h in zip(rows, cols) if overlap[r, h] > 0}
    return scored, missed, false_alarm, confusion, mapping


def diarization_error(
    reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.25
) -> DERResult:
    """DER over all files of ``reference``; hypothesis turns for other files count as FA."""
    if collar < 0:
        raise ValueError(f"collar must be >= 0, got {collar}")
    by_file: dict[str, tuple[list[Turn], list[Turn]]] = defaultdict(lambda: ([], []))
    for t in reference:
        by_file[t.file][0].append(t)
    for t in hypothesis:
        by_file[t.file][1].append(t)
    out = DERResult()
    for name, (ref, hyp) in sorted(by_file.items()):
        scored, missed, fa, conf, mapping = _file_errors(ref, hyp, collar)
        out.scored += scored
        out.missed += missed
        out.false_alarm += fa
        out.confusion += conf
        out.mapping[name] = mapping
    return out
