"""``speakertune doctor``: is this environment fit to run sweeps? (checks: speakertune.doctor)"""

from __future__ import annotations

import argparse
import os

from speakertune import doctor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speakertune doctor",
                                description=doctor.__doc__.split("\n")[0])
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="a running Ray cluster to inspect (default: $RAY_ADDRESS)")
    p.add_argument("--quick", action="store_true",
                   help="only the cheap local checks (what `make sweep` runs first)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--runs-dir", default="runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    failed = 0
    for check in doctor.run_checks(args.quick, args.address, args.data_dir, args.runs_dir):
        print(check.line(), flush=True)
        failed += check.status == "FAIL"
    return 1 if failed else 0
