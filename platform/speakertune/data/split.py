"""Speaker-disjoint train/validation split and a balanced, seeded validation trial list."""

from __future__ import annotations

import numpy as np
import pandas as pd

from speakertune.data.errors import DataError


def split_by_speaker(
    df: pd.DataFrame, val_speakers: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``val_speakers`` whole speakers (chosen by ``seed``) for validation, so
    validation speakers are never seen in training."""
    speakers = np.array(sorted(df["spk"].unique()))
    if not 2 <= val_speakers < len(speakers):
        raise DataError(
            f"val_speakers={val_speakers}: need 2 <= val_speakers < number of speakers "
            f"({len(speakers)})"
        )
    rng = np.random.default_rng(seed)
    val = set(rng.choice(speakers, size=val_speakers, replace=False).tolist())
    is_val = df["spk"].isin(val)
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def make_trials(val_df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` distinct trials, half target (same speaker, different utterances) and half
    non-target, drawn reproducibly from ``seed``. With a ``session`` column (a video, a
    recording day) target pairs come from different sessions of the speaker, as in VoxCeleb's
    lists, wherever the speaker has two. When fewer than ``n/2`` target pairs exist, all of
    them are used and the non-target half is shrunk to match (still balanced)."""
    utts = val_df["utt"].to_numpy()
    spk = val_df["spk"].to_numpy()
    session = val_df["session"].astype(str).to_numpy() if "session" in val_df else None
    by_spk = [np.flatnonzero(spk == s) for s in np.unique(spk)]
    groups = by_spk
    if session is not None:  # only speakers with two sessions give cross-session targets
        groups = [g for g in by_spk if len(np.unique(session[g])) > 1]
        session = session if groups else None
        groups = groups or by_spk
    sizes = np.array([len(g) for g in groups])
    n_pairs = sizes * (sizes - 1) // 2
    if session is not None:  # pairs within one session do not count
        n_pairs = n_pairs - np.array([_within(session[g]) for g in groups])
    if n_pairs.sum() == 0 or len(by_spk) < 2:
        raise DataError("make_trials: need >= 2 speakers and one speaker with >= 2 utterances")
    n_non = len(utts) * (len(utts) - 1) // 2 - sum(len(g) * (len(g) - 1) // 2 for g in by_spk)
    n_half = int(min(n // 2, n_pairs.sum(), n_non))
    rng = np.random.default_rng(seed)

    target: set[tuple[int, int]] = set()
    def ok(a: int, b: int) -> bool:
        return session is None or session[a] != session[b]

    if n_half == n_pairs.sum():  # all pairs wanted: enumerate instead of rejection sampling
        for g in groups:
            target.update((int(a), int(b)) for k, a in enumerate(g) for b in g[k + 1 :] if ok(a, b))
    p = n_pairs / n_pairs.sum()  # pick speakers in proportion to their pair count: uniform pairs
    while len(target) < n_half:
        g = groups[rng.choice(len(groups), p=p)]
        i, j = sorted(rng.choice(len(g), size=2, replace=False))
        if ok(g[i], g[j]):
            target.add((int(g[i]), int(g[j])))

    nontarget: set[tuple[int, int]] = set()
    while len(nontarget) < n_half:
        i, j = sorted(rng.choice(len(utts), size=2, replace=False).tolist())
        if spk[i] != spk[j]:
            nontarget.add((i, j))

    pairs = [(i, j, 1) for i, j in sorted(target)] + [(i, j, 0) for i, j in sorted(nontarget)]
    order = rng.permutation(len(pairs))
    rows = [(utts[pairs[k][0]], utts[pairs[k][1]], pairs[k][2]) for k in order]
    out = pd.DataFrame(rows, columns=["enroll", "test", "label"])
    out["label"] = out["label"].astype("int64")
    return out


def _within(sessions: np.ndarray) -> int:
    """Same-session pairs among one speaker's utterances."""
    _, counts = np.unique(sessions, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())
