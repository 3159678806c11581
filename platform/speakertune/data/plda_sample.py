"""Which training utterances the per-epoch PLDA fit sees."""

from __future__ import annotations

import numpy as np
import pandas as pd


def plda_sample(train_df: pd.DataFrame, max_utts: int, per_speaker: int, seed: int) -> pd.DataFrame:
    """Up to ``max_utts`` training utterances from up to ``max_utts // per_speaker`` speakers.

    PLDA learns within-speaker variation, so every chosen speaker contributes at least
    ``per_speaker`` utterances (or all of its own, if fewer, but never just one); speakers with a
    single utterance are left out. With few speakers the budget is filled round robin, so a
    100-speaker corpus gives more utterances per speaker, a 6,000-speaker one 4 each from a
    random subset. Reproducible for a seed.
    """
    per_speaker = max(2, int(per_speaker))
    counts = train_df.groupby("spk").size()
    eligible = counts.index[counts >= 2].to_numpy()
    rng = np.random.default_rng(seed)
    n_spk = min(len(eligible), max(1, int(max_utts) // per_speaker))
    chosen = set(rng.permutation(eligible)[:n_spk])
    pool = train_df[train_df["spk"].isin(chosen)].sample(frac=1.0, random_state=seed)
    rounds = pool.groupby("spk", sort=True).cumcount()
    picked = pool.assign(_round=rounds.values).sort_values(["_round", "spk"], kind="stable")
    return picked.head(int(max_utts)).drop(columns="_round").reset_index(drop=True)
