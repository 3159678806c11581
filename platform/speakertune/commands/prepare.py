"""Prepare a corpus: write ``OUT/manifest.parquet`` (+ ``OUT/trials.txt``).

    speakertune prepare synthetic --speakers 100 --utts 20 --out data/synth
    speakertune prepare kaldi data/train --out data/train_prepared
    speakertune prepare voxceleb /corpora/voxceleb1/wav --trials veri_test2.txt --out data/vox1
    speakertune prepare csv corpus.csv [--trials trials.txt] --out data/mine
    speakertune prepare musan /corpora/musan --out data/musan      # augment.noise_bank
    speakertune prepare rirs /corpora/RIRS_NOISES --out data/rirs   # augment.rir_bank
    speakertune prepare voxceleb s3://bucket/vox1/wav --out data/vox1   # audio stays in the bucket
    speakertune prepare voxceleb /corpora/vox1/wav --out data/vox1 --shards s3://bucket/vox1-shards
    speakertune prepare shard data/vox1/manifest.parquet data/vox1/shards --shard-mb 256
    speakertune prepare publish data/vox1 s3://bucket/vox1          # upload + rewrite URIs

Roots, data dirs, CSVs and trial lists may be ``s3://`` URIs (credentials and endpoint from the
AWS_* environment variables); the manifest's URIs then point into the bucket. Unreadable,
empty, truncated and too-short files are skipped, counted and listed in ``OUT/skipped.tsv``
(``--strict`` stops at the first instead). An ``OUT`` that already holds a prepared corpus is
refused unless ``--overwrite`` is given; each file is then replaced atomically, and a
``trials.txt`` this run does not write is removed, never left beside a new manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
    m = sub.add_parser("musan", help="MUSAN noise bank: music/ speech/ noise/ folders")
    m.add_argument("root")
    r = sub.add_parser("rirs", help="RIRS_NOISES room impulse responses (simulated + real)")
    r.add_argument("root")
    for sp in (k, v, c, m, r):
        sp.add_argument("--out", required=True, help="output directory")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace a corpus already prepared in --out")
        sp.add_argument("--strict", action="store_true",
                        help="stop at the first bad file instead of skipping it")
    sh = sub.add_parser("shard", help="pack a manifest's audio into Parquet shards")
    sh.add_argument("manifest")
    sh.add_argument("shards_dir", metavar="DIR", help="shard directory (local or s3://)")
    sh.add_argument("--strict", action="store_true",
                    help="stop at the first bad file instead of skipping it")
    pub = sub.add_parser("publish", help="upload a prepared corpus, rewriting its URIs")
    pub.add_argument("corpus_dir", metavar="DIR")
    pub.add_argument("dest", metavar="URI", help="s3://bucket/prefix")
    pub.add_argument("--overwrite", action="store_true",
                     help="publish a new version over a corpus already published at URI")
    for sp in (k, v, c):
        sp.add_argument("--min-seconds", type=float, default=0.5,
                        help="skip shorter utterances (default 0.5)")
        sp.add_argument("--shards", metavar="DIR",
                        help="also pack the audio into Parquet shards here (local or s3://)")
    for sp in (k, v, c, sh):
        sp.add_argument("--shard-mb", type=float, default=256.0,
                        help="target shard size in MB (default 256)")
        sp.add_argument("--seed", type=int, default=data["seed"], help="shard row order")
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
        if args.kind in ("shard", "publish"):
            return _shard(args) if args.kind == "shard" else _publish(args)
        _refuse_existing(Path(args.out), args.overwrite)
        skipped: list[tuple[str, str]] | None = None if args.strict else []
        df, trials = _read(args, skipped)
        manifest, trials_out = readers.write_corpus(df, trials, args.out, skipped)
        if args.kind in ("kaldi", "voxceleb", "csv") and args.shards:
            _write_shards(df, args, None if args.strict else [])
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hours = df["duration_s"].sum() / 3600
    print(f"{manifest}: {len(df)} utterances, {df['spk'].nunique()} speakers, {hours:.2f} h")
    if skipped:
        print(f"skipped {len(skipped)} (bad files, and trials naming them): "
              f"{Path(args.out) / 'skipped.tsv'}")
    if trials_out:
        print(f"{trials_out}: {len(trials)} trials ({int(trials['label'].sum())} target)")
    return 0


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """A prepared corpus in ``out`` is replaced only when asked: a manifest of 24 utterances
    silently becoming one of 2 is lost work."""
    from speakertune.data.errors import ManifestError

    found = [n for n in ("manifest.parquet", "trials.txt") if (out / n).exists()]
    if found and not overwrite:
        raise ManifestError(f"{out}: already holds a prepared corpus ({', '.join(found)}); "
                            "pass --overwrite to replace it, or choose another --out")


def _write_shards(df: Any, args: argparse.Namespace, skipped: list | None) -> None:
    """Pack the manifest rows ``df`` into shards; files that fail to decode are counted."""
    from speakertune.data.shards import write_shards

    out = getattr(args, "shards", None) or args.shards_dir
    s = write_shards(df, out, shard_mb=args.shard_mb, seed=args.seed, skipped=skipped)
    print(f"{out}: {len(s.files)} shard(s), {s.rows} utterances, {s.bytes / 2**20:.1f} MB of FLAC"
          + (f", skipped {len(s.skipped)} unreadable (first: {s.skipped[0][1]})" if s.skipped
             else ""))  # fmt: skip


def _shard(args: argparse.Namespace) -> int:
    from speakertune.data.manifest import read_manifest

    _write_shards(read_manifest(args.manifest), args, None if args.strict else [])
    return 0


def _publish(args: argparse.Namespace) -> int:
    from speakertune.data.publish import publish_corpus

    out = publish_corpus(args.corpus_dir, args.dest, overwrite=args.overwrite)
    print(f"{args.dest}: uploaded {out.files} files ({out.bytes / 2**20:.1f} MB)"
          + (f" under {out.version}" if out.version else "")
          + f"; manifests with rewritten URIs: {', '.join(out.manifests)}")
    if out.skipped:
        print(f"skipped {len(out.skipped)} symlink(s) leading out of {args.corpus_dir} "
              f"(not uploaded): {', '.join(out.skipped[:5])}")
    return 0


def _read(args: argparse.Namespace, skipped: list | None) -> tuple:
    from speakertune.data import readers

    if args.kind == "kaldi":
        df, trials = readers.read_kaldi(args.data_dir, skipped, args.min_seconds)
        return readers.materialize_segments(df, Path(args.out) / "segments"), trials
    if args.kind == "voxceleb":
        return readers.read_voxceleb(args.root, args.trials, skipped, args.min_seconds)
    if args.kind == "csv":
        return readers.read_csv(args.csv, args.trials, skipped, args.min_seconds)
    from speakertune.data import bank_readers

    read = bank_readers.read_musan if args.kind == "musan" else bank_readers.read_rirs
    return read(args.root, skipped)
