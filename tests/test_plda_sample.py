"""The PLDA training sample: enough utterances per speaker at every corpus size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from speakertune.data.plda_sample import plda_sample
from speakertune.scoring.backends import PLDABackend


def corpus(speakers: int, utts: int) -> pd.DataFrame:
    return pd.DataFrame({"utt": [f"s{s}_u{u}" for s in range(speakers) for u in range(utts)],
                         "spk": [f"s{s}" for s in range(speakers) for u in range(utts)]})


def test_small_corpus_is_filled_round_robin_without_singletons() -> None:
    df = pd.concat([corpus(5, 6), pd.DataFrame({"utt": ["lone"], "spk": ["solo"]})])
    picked = plda_sample(df, 23, per_speaker=4, seed=3)
    counts = picked["spk"].value_counts()
    assert len(picked) == 23 and picked["utt"].is_unique
    assert "solo" not in counts  # one utterance says nothing about within-speaker variation
    assert set(counts.index) == {f"s{s}" for s in range(5)} and counts.max() - counts.min() <= 1
    assert picked.equals(plda_sample(df, 23, per_speaker=4, seed=3))  # reproducible


@pytest.mark.parametrize("speakers,budget,per,want_spk,want_min", [
    (1211, 8000, 4, 1211, 6),   # VoxCeleb1 dev: every speaker, 6-7 utterances each
    (5994, 8000, 4, 2000, 4),   # VoxCeleb2 dev: 2,000 random speakers x 4
    (20, 8000, 4, 20, 30),      # a tiny corpus: everything it has
])
def test_every_chosen_speaker_gets_enough(speakers, budget, per, want_spk, want_min) -> None:
    df = corpus(speakers, 30)
    picked = plda_sample(df, budget, per_speaker=per, seed=0)
    counts = picked["spk"].value_counts()
    assert len(counts) == want_spk and counts.min() >= want_min
    assert len(picked) == min(budget, len(df))


def test_plda_fits_on_a_voxceleb1_sized_sample() -> None:
    """The old round-robin gave 1,000 speakers one utterance each and the fit raised."""
    df = corpus(1211, 20)
    picked = plda_sample(df, 8000, per_speaker=4, seed=0)
    rng = np.random.default_rng(0)
    centres = {s: rng.normal(size=32) for s in picked["spk"].unique()}
    emb = np.stack([centres[s] + 0.5 * rng.normal(size=32) for s in picked["spk"]])
    backend = PLDABackend(lda_dim=16).fit(emb, picked["spk"].to_numpy())
    assert np.isfinite(backend.score(emb[:5], emb[5:10])).all()
