"""A VoxCeleb2-sized manifest through the sweep's data set-up: corpus loading (read + validate),
speaker split, dev-trial generation and the PLDA sample (ours) vs a bare pandas Parquet read of
the same file (baseline: the floor any loader pays). URIs need not exist.

    .venv/bin/python benchmarks/scale/corpus_scale.py [--quick]

Full size: 1,092,009 utterances of 5,994 speakers with 1-60 videos each (VoxCeleb2 dev); budget
60 s and 4 GiB peak RSS on 2 cores. --quick: 150,000 utterances of 1,211 speakers (VoxCeleb1).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
from speakertune.config import DEFAULTS
from speakertune.data.corpus import load_corpus
from speakertune.data.plda_sample import plda_sample
from speakertune.testing.fake_manifest import VOXCELEB2_DEV, fake_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    utts, speakers = (150_000, 1_211) if args.quick else VOXCELEB2_DEV
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        fake_manifest(path, utts, speakers)
        t0 = time.perf_counter()
        pd.read_parquet(path)
        base = time.perf_counter() - t0
        data = {**DEFAULTS["data"], "corpus": "manifest", "manifest": str(path),
                "val_speakers": max(40, speakers // 50)}
        t0 = time.perf_counter()
        corpus = load_corpus(data)
        t = DEFAULTS["trainer"]
        sample = plda_sample(corpus.train, t["plda_utts"], t["plda_utts_per_speaker"], 0)
        ours = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{utts:,} utterances, {speakers:,} speakers: train {len(corpus.train):,}, dev "
          f"{len(corpus.val):,} ({corpus.val['spk'].nunique()} speakers), "
          f"{len(corpus.trials):,} dev trials, PLDA sample {len(sample):,} from "
          f"{sample['spk'].nunique():,} speakers (min {sample['spk'].value_counts().min()} each)")
    print(f"set-up {ours:.1f} s, bare Parquet read {base:.1f} s, peak RSS {rss_gb:.2f} GiB")
    verdict = "under" if ours < 60 and rss_gb < 4 else "OVER"
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(f"| corpus set-up {utts:,} utts / {speakers:,} spk | {ours:.1f} s | {base:.1f} s "
          f"(pandas read) | {base / ours:.2f}x | {verdict} 60 s / 4 GiB (peak {rss_gb:.2f} GiB) |")


if __name__ == "__main__":
    main()
