"""Verify that two recordings share a speaker: calibrated LLR and an accept/reject decision.

    speakertune verify a.wav b.wav --model runs/<sweep>/best [--threshold bayes|far]
"""

from __future__ import annotations

import argparse
import sys

from speakertune.redact import redact_text


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """``--model`` and ``--device``, shared by verify, enroll and identify."""
    ap.add_argument("--model", required=True,
                    help="model directory with calibration.json (a sweep's best/)")
    ap.add_argument("--device", default="cpu")


def fail(exc: Exception) -> int:
    print(f"error: {redact_text(str(exc).splitlines()[0])}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speakertune verify", description=__doc__.splitlines()[0])
    ap.add_argument("enroll", help="enrollment audio file")
    ap.add_argument("test", help="test audio file")
    add_model_args(ap)
    ap.add_argument("--threshold", choices=["bayes", "far"], default="bayes",
                    help="bayes: LLR > log((1-p)/p) at the calibration's p_target; far: the "
                         "threshold giving the calibration's dev false-accept rate")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from speakertune.scoring.decisions import CalibratedModel

    try:
        model = CalibratedModel.load(args.model, args.device)
        emb = model.embed([args.enroll, args.test])
        llr = float(model.llrs([emb[:1]], emb[1])[0])
        decision = model.decide(llr, args.threshold)
    except ValueError as exc:  # project errors are ValueErrors carrying a one-line message
        return fail(exc)
    print(f"LLR: {llr:.3f} (backend {model.backend}, calibrated on dev trials)")
    print(f"decision: {decision.describe(model.cal)}")
    return 0
