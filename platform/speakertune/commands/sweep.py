"""Run a hyperparameter sweep: ``speakertune sweep --space quickstart.yaml``.

The space is validated before Ray starts (``--check``: only that, and print the plan); see the
README ("Running sweeps") for the format and options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from speakertune import redact
from speakertune.config import ConfigError, deep_merge
from speakertune.search.cluster import ClusterError, config_plan
from speakertune.search.space import SearchSpace, load_space
from speakertune.search.suggest import check_builds, check_data
from speakertune.train.driver import trial_resources


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speakertune sweep", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space YAML, or a NAME in search_spaces/")
    p.add_argument(
        "--storage", default="runs", help="results root: a local dir or s3://bucket/prefix"
    )
    p.add_argument("--name", default=None, help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto'); or RAY_ADDRESS")
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    p.add_argument("--data", default=None, metavar="MANIFEST",
                   help="train on this prepared corpus (a manifest.parquet, local or s3://) "
                        "instead of the space's data section")
    p.add_argument("--cluster-config", default=None,
                   help="autoscaler YAML to size concurrency by (default on a joined cluster: "
                        "~/ray_bootstrap_config.yaml if present; none: the fixed-cluster rule)")
    p.add_argument("--shared-storage", action="store_true",
                   help="local --storage and data paths are a shared mount (NFS) at the same "
                        "path on every node")
    p.add_argument("--report-dir", default="runs", help="local dir for leaderboard and best/")
    p.add_argument("--verbose", action="store_true",
                   help="show everything Ray prints (its INFO logs and deprecation warnings)")
    p.add_argument("--check", action="store_true",
                   help="validate the space, print the plan and exit (Ray is not started)")
    return p


def plan(space: SearchSpace, name: str | None, built: int) -> str:
    """A few lines: what the sweep would run."""
    s, asha = space.search, space.scheduler.get("asha")
    lines = [f"sweep {name or space.name}: {space.source}",
             f"trials: {s['num_samples']}, {s['metric']} ({s['mode']}, {s['backend']} dev EER), "
             + ("ASHA " + " ".join(f"{k}={v}" for k, v in asha.items()) if asha else "FIFO")
             + (f", at most {s['max_concurrent']} at once" if s["max_concurrent"] else "")
             + (f", time limit {s['time_limit_s']} s" if s["time_limit_s"] else ""),
             f"params ({len(space.params)}):"]
    for p in space.params.values():
        when = " when " + ", ".join(f"{k} in {v}" for k, v in p.when.items()) if p.when else ""
        step = f" step {p.step}" if p.step is not None else ""
        lines.append(f"  {p.path}: {p.kind} {p.args}{step}{when}")
    lines.append(f"ok: space valid, {built} component configs built")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact.install()  # after the handlers exist: it filters what they write
    try:
        space = load_space(args.space)
        if args.data:  # the space's data section, keys other than the corpus kept
            space.base = deep_merge(space.base, {"data": {"corpus": "manifest",
                                                          "manifest": args.data}})
        built = check_builds(space)  # component options too, still before Ray starts
        data_line = check_data(space)  # and the train/dev/test lists of a prepared corpus
    except ConfigError as exc:
        print(f"error: {redact.redact_text(str(exc))}", file=sys.stderr)
        return 2
    if args.num_samples is not None:
        if args.num_samples < 1:
            print("error: --num-samples: must be >= 1", file=sys.stderr)
            return 2
        space.search["num_samples"] = args.num_samples
    if args.check:
        print(plan(space, args.name, built))
        print(data_line)
        if args.cluster_config:
            try:
                print(config_plan(trial_resources(space.trial_config({})),
                                  space.search["max_concurrent"], space.search["num_samples"],
                                  args.cluster_config))  # fmt: skip
            except ClusterError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        return 0

    from speakertune.search.sweep import SweepError, run_sweep

    try:
        result = run_sweep(
            space,
            storage=args.storage,
            name=args.name,
            resume=args.resume,
            address=args.address,
            report_root=args.report_dir,
            verbose=args.verbose,
            cluster_config=args.cluster_config,
            shared_storage=args.shared_storage,
        )
    except (SweepError, ConfigError) as exc:
        print(f"error: {redact.redact_text(str(exc))}", file=sys.stderr)
        return 2
    if result.leaderboard["val_eer"].notna().sum() == 0:
        why = f"; the first error: {result.first_error}" if result.first_error else ""
        print(f"error: no trial reported a dev EER{why}", file=sys.stderr)
        return 1
    return 0
