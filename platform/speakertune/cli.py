"""``python -m speakertune``: discover components and run the jobs."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

JOBS = ("prepare", "train", "sweep", "evaluate", "diarize", "explain")


def _jobs_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "jobs"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="speakertune", description="Hyperparameter search for speaker verification on Ray."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="print registered component names, one per line")
    p_list.add_argument("kind", choices=["models", "poolings", "losses", "features", "backends"])
    sub.add_parser("doctor", help="check the environment (PASS/WARN/FAIL per line)", add_help=False)
    for job in JOBS:
        sub.add_parser(job, help=f"run jobs/{job}.py (arguments pass through)", add_help=False)
    if argv and argv[0] == "doctor":
        from speakertune.doctor import main as doctor

        return doctor(argv[1:])
    if argv and argv[0] in JOBS:
        script = _jobs_dir() / f"{argv[0]}.py"
        if not script.exists():
            parser.error(f"job script not found: {script}")
        sys.argv = [str(script), *argv[1:]]
        runpy.run_path(str(script), run_name="__main__")
        return 0
    args = parser.parse_args(argv)
    if args.command == "list":
        from speakertune.registry import REGISTRIES, load_all

        load_all()
        print("\n".join(REGISTRIES[args.kind].names()))
        return 0
    parser.print_help()
    return 0
