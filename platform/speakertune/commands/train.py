"""Train one configuration (no search) with Ray Train and print its final EERs.

    speakertune train --config CONFIG.yaml [--set trainer.epochs=5 --set loss.margin=0.3]
        [--storage runs] [--name NAME] [--address auto]
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from speakertune.config import ConfigError, load_yaml, resolve
from speakertune.redact import install as install_redaction
from speakertune.redact import redact_text


def parse_sets(items: list[str]) -> dict[str, object]:
    """``key.path=value`` pairs; values are read as YAML scalars (``0.2``, ``true``, ``[1, 2]``)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speakertune train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="trial config YAML (merged over the defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config value by dotted path (repeatable)")
    ap.add_argument("--storage", default="runs", help="results directory or s3:// URI")
    ap.add_argument("--name", default=None, help="run name (default: train_<timestamp>)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    ap.add_argument("--verbose", action="store_true",
                    help="show everything Ray prints (its INFO logs and deprecation warnings)")
    return ap


def main(argv: list[str] | None = None) -> int:
    install_redaction()
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve(load_yaml(args.config) if args.config else {}, parse_sets(args.set))
    except ConfigError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2

    from speakertune.search.ray_runtime import init_ray
    from speakertune.train.driver import TrainerError, train

    try:
        init_ray(args.address, verbose=args.verbose, dashboard=False)  # quiet as a sweep
        out = train(cfg, storage_path=args.storage, name=args.name)
    except (ValueError, TrainerError) as exc:  # project errors carry one-line messages
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    print(f"epochs: {out.get('epoch')}  val_eer ({cfg['trainer']['val_backend']}): "
          f"{100 * out['val_eer']:.2f}%")
    print(f"EER cosine: {100 * out['val_eer_cosine']:.2f}%  "
          f"EER PLDA: {100 * out['val_eer_plda']:.2f}%  "
          f"minDCF(0.01) cosine {out['val_min_dcf_cosine']:.3f} "
          f"PLDA {out['val_min_dcf_plda']:.3f}")
    if out.get("gpu_peak_mem_mb") is not None:  # the last epoch's report, through Ray Train
        print(f"gpu_peak_mem_mb: {out['gpu_peak_mem_mb']:.0f}  "
              f"utterances/s: {out.get('utterances_per_s', float('nan')):.0f}")
    print(f"checkpoint: {out['checkpoint']}\nbest checkpoint: {out['best_checkpoint']}")
    print(f"tensorboard --logdir {out['run_dir']}/tensorboard")
    return 0
