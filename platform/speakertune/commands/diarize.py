"""Diarize recordings with a trained checkpoint; score against a reference RTTM if given.

    speakertune diarize --checkpoint runs/x/best --audio a.wav b.flac --out runs/diar \
        [--method ahc|spectral] [--num-speakers 2] [--reference ref.rttm]

Writes ``hypothesis.rttm`` (all recordings), ``summary.md`` (per recording: speakers found and
each cluster's seconds, beside the reference's), ``<file>.png`` (speech, reference and
hypothesis turns) and, with ``--reference``, ``der.json`` (per file and total). Without
``--num-speakers`` the count is estimated: AHC stops where the checkpoint's calibrated LLR is
0, spectral clustering takes the largest eigengap.
"""

from __future__ import annotations

import argparse
import sys

from speakertune.diarization.diarize import DiarizeConfig
from speakertune.diarization.recordings import COLLAR_S, diarize_files
from speakertune.redact import redact_text
from speakertune.registry import CLUSTERINGS


def build_parser() -> argparse.ArgumentParser:
    d = DiarizeConfig
    p = argparse.ArgumentParser(prog="speakertune diarize", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--audio", nargs="+", required=True, help="recordings (local or s3://)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--window", type=float, default=d.window_s, help="window length, seconds")
    p.add_argument("--hop", type=float, default=d.hop_s, help="window hop, seconds")
    p.add_argument("--backend", choices=["cosine", "plda"], default=None,
                   help="affinity backend (default: the one the checkpoint was ranked on)")
    p.add_argument("--method", choices=CLUSTERINGS.names(), default=d.method,
                   help="clustering (ahc: calibrated threshold; spectral: eigengap)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--threshold", type=float, help="ahc: stop merging below this affinity")
    stop.add_argument("--num-speakers", type=int, help="known number of speakers (default: "
                      "counted, stopping where the checkpoint's calibrated LLR is 0)")
    p.add_argument("--min-speakers", type=int, default=d.min_speakers,
                   help="bounds on a counted number of speakers")
    p.add_argument("--max-speakers", type=int, default=d.max_speakers)
    p.add_argument("--linkage", default=d.linkage, choices=["average", "complete", "single"])
    p.add_argument("--neighbours", type=int, default=d.neighbours,
                   help="spectral: each window's links in the k-NN graph (0: the size that "
                   "miscounts least on meetings of the dev speakers)")
    p.add_argument("--reassign", type=int, default=d.reassign,
                   help="passes moving each window to its most similar cluster (0: off)")
    p.add_argument("--min-cluster", type=float, default=d.min_cluster_s,
                   help="seconds: a smaller cluster joins its nearest speaker")
    p.add_argument("--vad-db", type=float, default=d.vad_db,
                   help="speech within N dB of loud frames")
    p.add_argument("--reference", help="reference RTTM for DER")
    p.add_argument("--collar", type=float, default=COLLAR_S,
                   help="DER forgiveness collar, seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dcfg = DiarizeConfig(window_s=args.window, hop_s=args.hop, backend=args.backend,
                             threshold=args.threshold, num_speakers=args.num_speakers,
                             linkage=args.linkage, vad_db=args.vad_db, method=args.method,
                             neighbours=args.neighbours, reassign=args.reassign,
                             min_cluster_s=args.min_cluster,
                             min_speakers=args.min_speakers, max_speakers=args.max_speakers)
        result = diarize_files(args.checkpoint, args.audio, args.out, dcfg,
                               reference=args.reference, collar=args.collar)
    except (ValueError, OSError) as exc:  # project errors are ValueErrors: one line each
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    print(f"wrote {result.rttm}")
    return 0
