"""Build time of the built-in synthetic corpus: process pool (ours) vs one process (baseline).

    .venv/bin/python benchmarks/compare/synthetic_corpus.py [--quick]

Full size is the default corpus (100 speakers x 20 utterances, noise and RIR banks); the
brief requires it to build in under a minute on 2 cores. --quick builds 24 x 20.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from speakertune.data.manifest import read_manifest
from speakertune.data.synthetic import ensure_synthetic_corpus


def build(root: Path, speakers: int, utts: int, workers: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    ensure_synthetic_corpus(root, speakers, utts, seed=0, workers=workers, progress=None)
    seconds = time.perf_counter() - t0
    hours = read_manifest(root / "manifest.parquet")["duration_s"].sum() / 3600
    return seconds, hours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    speakers, utts = (24, 20) if args.quick else (100, 20)
    with tempfile.TemporaryDirectory() as tmp:
        ours, hours = build(Path(tmp) / "pool", speakers, utts, args.workers)
        base, _ = build(Path(tmp) / "serial", speakers, utts, 1)
    print(f"corpus: {speakers} speakers x {utts} utts = {hours:.2f} h of 16 kHz FLAC, "
          f"plus 16 noise clips and {max(4, min(20, speakers // 5))} RIRs")  # fmt: skip
    print(f"pool of {args.workers}: {ours:.1f} s ({hours * 3600 / ours:.0f}x real time)")
    print(f"one process: {base:.1f} s ({hours * 3600 / base:.0f}x real time)")
    verdict = "under" if ours < 60 else "OVER"
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(
        f"| synthetic corpus {speakers}x{utts} | {ours:.1f} s ({args.workers} procs) "
        f"| {base:.1f} s (1 proc) | {base / ours:.2f}x | {verdict} 60 s, {hours:.2f} h audio |"
    )


if __name__ == "__main__":
    main()
