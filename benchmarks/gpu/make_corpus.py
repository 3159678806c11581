"""A toy speaker corpus for the offline GPU check: numpy/scipy voices only (no espeak).

Writes N speakers x M utterances of 16 kHz WAV (tests/toy_speakers.py's source-filter voices)
and ``corpus.csv`` (utt,spk,uri,duration_s,sample_rate) for ``prepare csv``.

    python benchmarks/gpu/make_corpus.py OUT_DIR [--speakers 40] [--utts 10] [--seconds 3]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from toy_speakers import SR, make_speakers, utterance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--speakers", type=int, default=40)
    ap.add_argument("--utts", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    wav_dir = args.out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for s, spk in enumerate(make_speakers(args.speakers, seed=0)):
        for u in range(args.utts):
            seconds = args.seconds * rng.uniform(0.8, 1.2)
            path = wav_dir / f"spk{s:03d}_{u:02d}.wav"
            sf.write(path, utterance(spk, seconds, rng), SR, subtype="PCM_16")
            rows.append([path.stem, f"spk{s:03d}", f"wav/{path.name}",
                         f"{sf.info(path).duration:.3f}", SR])
    with open(args.out / "corpus.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["utt", "spk", "uri", "duration_s", "sample_rate"])
        w.writerows(rows)
    print(f"{args.out / 'corpus.csv'}: {len(rows)} utterances, {args.speakers} speakers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
