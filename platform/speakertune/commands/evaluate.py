"""Evaluate a checkpoint on a trial list: EER / minDCF per backend, scores, DET and t-SNE.

    speakertune evaluate --checkpoint runs/x/checkpoint --manifest m.parquet \
        --trials trials.txt [--backend cosine|plda|both] [--asnorm-cohort 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys

from speakertune.redact import install as install_redaction
from speakertune.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speakertune evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory")
    ap.add_argument("--manifest", required=True, help="manifest (Parquet, local or s3://)")
    ap.add_argument("--trials", required=True, help="trial list 'enroll test label'")
    ap.add_argument("--backend", choices=["cosine", "plda", "both"], default=None,
                    help="scoring backend(s) (default: the one the checkpoint was ranked on)")
    ap.add_argument("--asnorm-cohort", type=int, default=0, metavar="N",
                    help="AS-norm with the top-N cohort scores (0: off)")
    ap.add_argument("--fit-manifest", default=None,
                    help="development manifest for backends missing from the checkpoint and "
                         "for the AS-norm cohort (default: manifest speakers in no trial)")
    ap.add_argument("--out", default="eval_out", help="output directory")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-seconds", type=float, default=None, help="crop long utterances")
    ap.add_argument("--no-tsne", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_redaction()

    from speakertune.scoring.evaluate import evaluate, results_table

    try:
        result = evaluate(
            args.checkpoint, args.manifest, args.trials, backend=args.backend,
            asnorm_cohort=args.asnorm_cohort or None, out_dir=args.out,
            fit_manifest=args.fit_manifest, batch_size=args.batch_size, device=args.device,
            max_seconds=args.max_seconds, progress=True, tsne=not args.no_tsne,
        )
    except ValueError as exc:  # project errors are ValueErrors carrying a one-line message
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    print(results_table(result.metrics))
    for k, v in result.identification.items():
        print(f"identification top-{k}: {100 * v:.2f}%")
    print(f"trials scored: {len(result.trials)}, dropped: {result.skipped_trials}; "
          f"utterances skipped: {len(result.skipped_utts)}")
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    return 0
