"""Prepare a corpus: write ``OUT/manifest.parquet`` (+ ``OUT/trials.txt``).

    speakertune prepare synthetic --speakers 100 --utts 20 --out data/synth
    speakertune prepare kaldi data/train --out data/train_prepared
    speakertune prepare voxceleb /corpora/voxceleb1/wav --trials veri_test2.txt --out data/vox1
    speakertune prepare csv corpus.csv [--trials trials.txt] --out data/mine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakertune.config import DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    data = DEFAULTS["data"]
    p = argparse.ArgumentParser(prog="speakertune prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("synthetic", help="build the built-in espeak-ng corpus")
    s.add_argument("--speakers", type=int, default=data["speakers"])
    s.add_argument("--utts", type=int, default=data["utts_per_speaker"],
                   help="utterances per speaker")
    s.add_argument("--seed", type=int, default=data["seed"])
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--out", default=data["root"], help=f"output directory (default {data['root']})")
    k = sub.add_parser("kaldi", help="Kaldi data dir (wav.scp, utt2spk/spk2utt, segments, trials)")
    k.add_argument("data_dir")
    v = sub.add_parser("voxceleb", help="VoxCeleb layout <spk>/<video>/<utt>.wav")
    v.add_argument("root")
    v.add_argument("--trials", help="official trial list ('1 enroll test' lines)")
    c = sub.add_parser("csv", help="CSV with header utt,spk,uri[,duration_s,sample_rate]")
    c.add_argument("csv")
    c.add_argument("--trials", help="trial list ('enroll test label' lines)")
    for sp in (k, v, c):
        sp.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from speakertune.data import readers
    from speakertune.data.errors import DataError

    try:
        if args.kind == "synthetic":
            from speakertune.data.synthetic import ensure_synthetic_corpus

            root = ensure_synthetic_corpus(
                args.out, args.speakers, args.utts, args.seed, workers=args.workers
            )
            print(f"synthetic corpus ready: {root}/manifest.parquet, {root}/trials.txt")
            return 0
        if args.kind == "kaldi":
            df, trials = readers.read_kaldi(args.data_dir)
            df = readers.materialize_segments(df, Path(args.out) / "segments")
        elif args.kind == "voxceleb":
            df, trials = readers.read_voxceleb(args.root, args.trials)
        else:
            df, trials = readers.read_csv(args.csv, args.trials)
        manifest, trials_out = readers.write_corpus(df, trials, args.out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hours = df["duration_s"].sum() / 3600
    print(f"{manifest}: {len(df)} utterances, {df['spk'].nunique()} speakers, {hours:.2f} h")
    if trials_out:
        print(f"{trials_out}: {len(trials)} trials ({int(trials['label'].sum())} target)")
    return 0
