"""Attribution maps (saliency, Grad-CAM, Grad-CAM++, FullGrad) for a checkpoint and utterances.

    speakertune explain --checkpoint runs/x/ckpt --audio utt.wav [--enroll spk.wav] \
        --out runs/explain [--methods saliency gradcam] [--layer frame_level.stages]

For each utterance writes ``<stem>_class_<method>.{png,npy}`` (target: the logit of the
predicted speaker, when the checkpoint has a classifier) and, with ``--enroll``,
``<stem>_enroll_<method>.{png,npy}`` (target: cosine similarity to the enrollment embedding).
The ``.npy`` arrays are the raw [frames, feature bins] maps; ``summary.txt`` lists the scores.
"""

from __future__ import annotations

import argparse
import sys

from speakertune.explain import METHODS, explain_files
from speakertune.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speakertune explain", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--audio", nargs="+", required=True, help="utterances to explain")
    p.add_argument("--enroll", help="enrollment utterance: also explain similarity to it")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--layer", help="dotted module name for Grad-CAM (default: last map "
                                   "before pooling)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lines = explain_files(args.checkpoint, args.audio, args.out, enroll=args.enroll,
                              methods=args.methods, layer=args.layer)
    except (ValueError, OSError) as exc:  # project errors are ValueErrors: one line each
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    print("\n".join(lines[2:]))
    print(f"wrote maps to {args.out}")
    return 0
