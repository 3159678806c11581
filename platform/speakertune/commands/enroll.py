"""Enroll a speaker into a gallery folder from one or more recordings.

    speakertune enroll NAME a.wav [b.wav ...] --model runs/<sweep>/best --gallery DIR [--replace]

An enrolled NAME is replaced only with ``--replace``.
"""

from __future__ import annotations

import argparse

from speakertune.commands.verify import add_model_args, fail


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speakertune enroll", description=__doc__.splitlines()[0])
    ap.add_argument("name", help="speaker name (letters, digits, '_', '-', '.')")
    ap.add_argument("files", nargs="+", help="enrollment audio files")
    add_model_args(ap)
    ap.add_argument("--gallery", required=True, help="gallery folder (created if needed)")
    ap.add_argument("--replace", action="store_true", help="replace an enrolled NAME")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from speakertune.scoring.decisions import CalibratedModel, enroll

    try:
        path = enroll(CalibratedModel.load(args.model, args.device), args.name, args.files,
                      args.gallery, replace=args.replace)
    except ValueError as exc:
        return fail(exc)
    print(f"enrolled {args.name}: {len(args.files)} file(s) -> {path}")
    return 0
