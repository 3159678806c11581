"""VoxCeleb-sized manifests without audio: for what reads only the manifest (splits, PLDA
samples, ``sweep --check``), at the users' scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VOXCELEB2_DEV = (1_092_009, 5_994)  # utterances, speakers


def fake_manifest(path: Path, utts: int, speakers: int, seed: int = 0) -> None:
    """A manifest of ``utts`` rows over ``speakers`` speakers (20 sessions each, 4-20 s),
    URIs in ``s3://bucket/vox2/``; nothing is written but the parquet file."""
    rng = np.random.default_rng(seed)
    spk = np.sort(rng.integers(0, speakers, utts))
    video = rng.integers(0, 20, utts)
    ids = [f"id{s:05d}/v{v:02d}/{i:05d}.wav" for i, (s, v) in enumerate(zip(spk, video))]
    pd.DataFrame({
        "utt": ids, "spk": [f"id{s:05d}" for s in spk], "session": video.astype(str),
        "uri": [f"s3://bucket/vox2/{u}" for u in ids],
        "duration_s": rng.uniform(4.0, 20.0, utts), "sample_rate": 16000,
    }).to_parquet(path, index=False)  # fmt: skip
