"""A toy speaker corpus for the offline GPU check: numpy/scipy voices only (no espeak).

Writes N speakers x M utterances of 16 kHz WAV (``speakertune.testing.toy_speakers`` voices)
and ``corpus.csv`` (utt,spk,uri,duration_s,sample_rate) for ``prepare csv``.

    python benchmarks/gpu/make_corpus.py OUT_DIR [--speakers 40] [--utts 10] [--seconds 3]
        [--banks]

``--banks`` also writes toy augmentation banks (``augment.noise_bank: OUT_DIR/noise``,
``augment.rir_bank: OUT_DIR/rir``): coloured noise, and RIRs as exponentially decaying noise
(RT60 0.2-0.8 s), so that noise and reverberation run where the built-in banks (espeak,
pyroomacoustics) cannot be built.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))  # bare checkout
from speakertune.testing.toy_speakers import SR, make_speakers, utterance  # noqa: E402


def write_banks(out: Path, rng: np.random.Generator, n: int = 8) -> None:
    """``out/noise/noise/*.wav`` (5 s, spectral slopes from white to brown) and ``out/rir/*.wav``
    (decaying noise: amplitude falls 60 dB over the RT60)."""
    (out / "noise" / "noise").mkdir(parents=True, exist_ok=True)
    (out / "rir").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spec = np.fft.rfft(rng.standard_normal(5 * SR))
        spec /= np.maximum(np.arange(len(spec)), 1) ** (i / (n - 1))  # 1/f^a, a in [0, 1]
        x = np.fft.irfft(spec)
        sf.write(out / "noise" / "noise" / f"n{i}.wav", 0.3 * x / np.abs(x).max(), SR)
        rt60 = 0.2 + 0.6 * i / (n - 1)
        t = np.arange(int(rt60 * SR)) / SR
        h = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)
        h[0] = 1.0
        sf.write(out / "rir" / f"r{i}.wav", (0.9 * h / np.abs(h).max()).astype(np.float32), SR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--speakers", type=int, default=40)
    ap.add_argument("--utts", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--banks", action="store_true", help="also write noise/ and rir/ banks")
    args = ap.parse_args(argv)
    if args.banks:
        write_banks(args.out, np.random.default_rng(1))
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
