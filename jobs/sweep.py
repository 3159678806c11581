"""Run a hyperparameter sweep: ``python jobs/sweep.py --space quickstart.yaml``.

The space is validated before Ray starts; see the README ("Running sweeps") for the format
and options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Running from a checkout without `pip install -e .` still finds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from speakertune import redact  # noqa: E402
from speakertune.config import ConfigError  # noqa: E402
from speakertune.search.sampler import check_builds  # noqa: E402
from speakertune.search.space import load_space  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space YAML, or a NAME in search_spaces/")
    p.add_argument(
        "--storage", default="runs", help="results root: a local dir or s3://bucket/prefix"
    )
    p.add_argument("--name", default=None, help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto'); or RAY_ADDRESS")
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    p.add_argument("--report-dir", default="runs", help="local dir for leaderboard and best/")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact.install()  # after the handlers exist: it filters what they write
    try:
        space = load_space(args.space)
        check_builds(space)  # component options too, still before Ray starts
    except ConfigError as exc:
        print(f"error: {redact.redact_text(str(exc))}", file=sys.stderr)
        return 2
    if args.num_samples is not None:
        if args.num_samples < 1:
            print("error: --num-samples: must be >= 1", file=sys.stderr)
            return 2
        space.search["num_samples"] = args.num_samples

    from speakertune.search.sweep import SweepError, run_sweep

    try:
        result = run_sweep(
            space,
            storage=args.storage,
            name=args.name,
            resume=args.resume,
            address=args.address,
            report_root=args.report_dir,
        )
    except (SweepError, ConfigError) as exc:
        print(f"error: {redact.redact_text(str(exc))}", file=sys.stderr)
        return 2
    return 1 if result.leaderboard["val_eer"].notna().sum() == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
