"""Export a checkpoint's encoder to ONNX or TorchScript, with a parity check against PyTorch.

    speakertune export --checkpoint runs/x/best --format onnx|torchscript [--out DIR] [--overwrite]

Writes the model, ``frontend.json`` and ``parity.json``/``parity.md`` (see
``speakertune.export``), built aside and moved into place together only when parity holds;
exits 1 when parity is exceeded (``DIR`` is left as it was, the report goes to
``DIR.rejected/``), 2 on bad input or when ``DIR`` holds an export and ``--overwrite`` is absent.
"""

from __future__ import annotations

import argparse
import logging
import sys

from speakertune.redact import install as install_redaction
from speakertune.redact import redact_text


def build_parser() -> argparse.ArgumentParser:
    from speakertune.export.parity import EER_TOL, EMB_TOL

    ap = argparse.ArgumentParser(prog="speakertune export", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/S/best)")
    ap.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    ap.add_argument("--out", default=None,
                    help="output directory (default: CHECKPOINT/export/FORMAT)")
    ap.add_argument("--emb-tol", type=float, default=EMB_TOL,
                    help="max |embedding difference| allowed, times max(1, max |embedding|)")
    ap.add_argument("--eer-tol", type=float, default=EER_TOL,
                    help="max |dev EER difference| allowed (absolute; 1e-4 = 0.01%%)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing export in --out (only if the new one passes)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_redaction()

    from speakertune.export import ParityError, export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.format, args.out,
                                   emb_tol=args.emb_tol, eer_tol=args.eer_tol,
                                   overwrite=args.overwrite)
    except ParityError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except ValueError as exc:  # project errors are ValueErrors carrying a one-line message
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    r = result.report
    worst = max(row["max_abs_diff"] for row in r["lengths"])
    print(f"exported {r['model']} -> {r['format']} ({r['exporter']})")
    lengths = ", ".join(f"{row['seconds']:g} s" for row in r["lengths"])
    print(f"parity: max |embedding difference| {worst:.3g} over {lengths}, "
          f"{r['dev']['max_abs_diff']:.3g} over {r['dev']['utterances']} dev utterances")
    for name, b in r["dev"]["backends"].items():
        if b["error"] is None:
            print(f"dev EER {name}: pytorch {100 * b['pytorch']:.4f}% exported "
                  f"{100 * b['exported']:.4f}% (|diff| {100 * b['abs_diff']:.4f}%)")
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    return 0
