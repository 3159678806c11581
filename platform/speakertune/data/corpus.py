"""One entry point from the ``data`` config section to train/val/trials DataFrames."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.errors import DataError
from speakertune.data.manifest import read_manifest
from speakertune.data.split import make_trials, split_by_speaker
from speakertune.data.trials import read_trials


@dataclass
class Corpus:
    train: pd.DataFrame  # manifest rows plus integer ``label`` in 0..num_classes-1
    val: pd.DataFrame  # rows of unseen speakers (or the utterances the trial list uses)
    trials: pd.DataFrame  # enroll, test, label over ``val`` utt ids
    num_classes: int
    noise: pd.DataFrame | None = None
    rir: pd.DataFrame | None = None
    # Out of repr: it may hold S3 credentials, and a printed Corpus would show them.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)


def load_corpus(data_cfg: dict[str, Any]) -> Corpus:
    """Build a ``Corpus`` from the ``data`` config section (see ``config.DEFAULTS``).

    ``corpus: synthetic`` builds (once, cached) the built-in corpus under ``root``. Otherwise
    ``manifest`` names a Parquet manifest (local or ``s3://``). With a ``trials`` list the
    validation set is every utterance the list names and training drops those speakers;
    without one ``val_speakers`` speakers are held out and ``val_trials`` trials generated.
    """
    cfg = dict(data_cfg)
    opts = dict(cfg.get("storage") or {})
    seed = int(cfg.get("seed", 0))
    noise = rir = None
    manifest, trials_path = cfg.get("manifest"), cfg.get("trials")
    if cfg.get("corpus", "synthetic") == "synthetic":
        from speakertune.data.synthetic import ensure_synthetic_corpus

        root = ensure_synthetic_corpus(
            cfg.get("root", "data/synth"),
            speakers=int(cfg.get("speakers", 100)),
            utts=int(cfg.get("utts_per_speaker", 20)),
            seed=seed,
        )
        manifest = root / "manifest.parquet"
        noise = read_manifest(root / "noise" / "manifest.parquet")
        rir = read_manifest(root / "rir" / "manifest.parquet")
    elif not manifest:
        raise DataError("data.manifest: required when data.corpus is not 'synthetic'")
    df = read_manifest(manifest, opts)

    if trials_path:
        trials = read_trials(trials_path, known_utts=df["utt"], storage_options=opts)
        used = set(trials["enroll"]) | set(trials["test"])
        val = df[df["utt"].isin(used)].reset_index(drop=True)
        train = df[~df["spk"].isin(set(val["spk"]))].reset_index(drop=True)
        if train.empty:
            raise DataError(f"{trials_path}: every speaker is in the trial list; none left")
    else:
        train, val = split_by_speaker(df, int(cfg.get("val_speakers", 20)), seed)
        trials = make_trials(val, int(cfg.get("val_trials", 2000)), seed)
    speakers = sorted(train["spk"].unique())
    index = {s: i for i, s in enumerate(speakers)}
    train = train.assign(label=train["spk"].map(index).astype("int64"))
    return Corpus(train, val, trials, len(speakers), noise, rir, opts)


def corpus_root(data_cfg: dict[str, Any]) -> Path | None:
    """Local root of the synthetic corpus, or None for prepared corpora."""
    if data_cfg.get("corpus", "synthetic") == "synthetic":
        return Path(data_cfg.get("root", "data/synth"))
    return None
