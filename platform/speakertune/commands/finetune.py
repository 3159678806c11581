"""Large-margin fine-tuning of a checkpoint (longer crops, larger margin, lower LR).

    speakertune finetune --checkpoint runs/SWEEP/best [--epochs 2 --margin 0.5
        --crop-seconds 6 --lr-scale 0.1] [--storage runs] [--out DIR] [--address auto]

Writes DIR/finetune.md + finetune.json (dev EER before/after with 95% CIs, test lists when the
checkpoint's config has data.test) and DIR/finetuned/<name>/ (the fine-tuned checkpoint); DIR
defaults to the checkpoint's parent folder (runs/SWEEP/).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from speakertune.config import DEFAULTS
from speakertune.redact import install as install_redaction
from speakertune.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS["finetune"]
    ap = argparse.ArgumentParser(prog="speakertune finetune", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/X/best)")
    ap.add_argument("--epochs", type=int, default=d["epochs"], help="fine-tuning epochs")
    ap.add_argument("--margin", type=float, default=d["margin"],
                    help="margin of an aam_softmax / am_softmax loss (others keep theirs)")
    ap.add_argument("--crop-seconds", type=float, default=d["crop_seconds"],
                    help="length of the training crops (seconds)")
    ap.add_argument("--lr-scale", type=float, default=d["lr_scale"],
                    help="learning rate = checkpoint's optimizer.lr x this")
    ap.add_argument("--storage", default="runs", help="where the Ray Train run goes")
    ap.add_argument("--out", default=None, help="report folder (default: checkpoint's parent)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    ap.add_argument("--verbose", action="store_true",
                    help="show everything Ray prints (its INFO logs and deprecation warnings)")
    return ap


def main(argv: list[str] | None = None) -> int:
    install_redaction()
    args = build_parser().parse_args(argv)
    from speakertune.search.finetune import finetune, finetune_settings, write_finetune_report

    try:
        settings = finetune_settings({"epochs": args.epochs, "margin": args.margin,
                                      "crop_seconds": args.crop_seconds,
                                      "lr_scale": args.lr_scale}, where="finetune")
    except ValueError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint)
    if not (ckpt / "model.pt").is_file():
        print(f"error: {ckpt}: not a checkpoint directory (no model.pt)", file=sys.stderr)
        return 2
    from speakertune.search.ray_runtime import init_ray
    from speakertune.train.driver import TrainerError

    out = Path(args.out) if args.out else ckpt.resolve().parent
    try:
        init_ray(args.address, verbose=args.verbose, dashboard=False)  # quiet as a sweep
        row = finetune(ckpt, settings, storage_path=args.storage, out_dir=out)
    except (ValueError, TrainerError) as exc:  # project errors carry one-line messages
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    files = write_finetune_report([row], out)
    print(f"report: {files['finetune_md']}  ({files['finetune_json'].name})")
    print(f"fine-tuned checkpoint: {row['finetuned']}")
    return 0
