"""``python -m speakertune`` / ``speakertune``: list components and run the commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from speakertune.registry import REGISTRIES, load_all

# name -> one-line help; each is speakertune.commands.<name> with build_parser() and main(argv)
COMMANDS = {
    "doctor": "check the environment (PASS/WARN/FAIL per line)",
    "prepare": "prepare a corpus: manifest.parquet (+ trials.txt)",
    "train": "train one configuration with Ray Train",
    "sweep": "run a hyperparameter sweep (--check: validate and print the plan)",
    "finetune": "large-margin fine-tuning of a checkpoint (before/after EER report)",
    "evaluate": "evaluate a checkpoint on a trial list (EER, minDCF, DET, t-SNE)",
    "diarize": "diarize recordings with a checkpoint (RTTM, DER)",
    "explain": "attribution maps (saliency, Grad-CAM, ...) for a checkpoint",
    "verify": "calibrated LLR and accept/reject for two recordings (a sweep's best/)",
    "enroll": "enroll a speaker's recordings into a gallery folder",
    "identify": "top-5 gallery speakers of a recording by calibrated LLR",
    "export": "export a checkpoint's encoder to ONNX/TorchScript, with a parity check",
}
KINDS = tuple(REGISTRIES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakertune", description="Hyperparameter search for speaker verification on Ray.",
        epilog="`speakertune COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="print registered component names, one per line")
    p_list.add_argument("kind", choices=KINDS)
    for name, text in COMMANDS.items():  # parsed by the command itself
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(f"speakertune.commands.{argv[0]}").main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        load_all()
        print("\n".join(REGISTRIES[args.kind].names()))
        return 0
    parser.print_help()
    return 0
