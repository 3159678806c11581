"""Identify the speaker of a recording among a gallery: top 5 by calibrated LLR.

    speakertune identify x.wav --model runs/<sweep>/best --gallery DIR [--threshold bayes|far]
"""

from __future__ import annotations

import argparse

from speakertune.commands.verify import add_model_args, fail


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speakertune identify", description=__doc__.splitlines()[0])
    ap.add_argument("file", help="audio file to identify")
    add_model_args(ap)
    ap.add_argument("--gallery", required=True, help="gallery folder written by enroll")
    ap.add_argument("--top", type=int, default=5, help="how many speakers to list")
    ap.add_argument("--threshold", choices=["bayes", "far"], default="bayes",
                    help="the threshold each listed speaker's accept/reject uses")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from speakertune.scoring.decisions import CalibratedModel, identify

    try:
        model = CalibratedModel.load(args.model, args.device)
        ranked = identify(model, args.file, args.gallery, args.top)
        decisions = [model.decide(llr, args.threshold) for _, llr in ranked]
    except ValueError as exc:
        return fail(exc)
    print(f"backend {model.backend}; {args.threshold} threshold "
          f"{decisions[0].threshold:.3f} (accept when LLR is above it)")
    print("rank  speaker  LLR  decision")
    for i, ((name, llr), d) in enumerate(zip(ranked, decisions), 1):
        print(f"{i}  {name}  {llr:.3f}  {'accept' if d.accept else 'reject'}")
    return 0
