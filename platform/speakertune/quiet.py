"""Readable sweep output: Ray's own deprecation warnings and INFO chatter silenced at their
source, in the driver and (through the job's environment) in every Ray worker process.

``speakertune sweep --verbose`` turns all of it back on. The switch travels to the workers as
``SPEAKERTUNE_VERBOSE`` in the Ray job's ``runtime_env``, so the Tune trial actors (which
build the Ray Train runs) and the Train workers see the same choice as the driver.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "SPEAKERTUNE_VERBOSE"
# Chatty Ray loggers: INFO lines per epoch (reports, checkpoints, Ray Data plans).
RAY_LOGGERS = ("ray.train", "ray.tune", "ray.data")


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def job_env(verbose: bool, *, local: bool) -> dict[str, str]:
    """Environment variables for every process of the Ray job (``runtime_env.env_vars``)."""
    env = {VERBOSE_ENV: "1" if verbose else "0"}
    if verbose:
        return env
    # Deprecations Ray raises against itself (e.g. Ray Train's data ingest still passing
    # ``ExecutionOptions.exclude_resources``): nothing a user of this platform can change.
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    if local:
        # A Ray started by this driver has no preemptible nodes to watch; the watcher actor
        # only logs a core-worker error about its restart policy for every Train run.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return env


def silence_ray(verbose: bool | None = None) -> None:
    """In this process: Ray's deprecation warnings off, its loggers at WARNING."""
    if is_verbose() if verbose is None else verbose:
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    try:
        from ray.util.annotations import RayDeprecationWarning

        warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    except ImportError:  # an older Ray without it
        pass
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def silence_train_worker() -> None:
    """``silence_ray`` for a Ray Train worker, whose root logger Train sets to INFO: some of
    Train's per-report lines are logged under a file-path logger name that only the root
    level reaches. This platform's own worker output is printed, not logged."""
    if is_verbose():
        return
    silence_ray(False)
    logging.getLogger().setLevel(logging.WARNING)


def train_log_level() -> str:
    """Ray Train's own ``LoggingConfig`` level for its controller's and workers' console.

    ERROR unless verbose: Train's warnings are about its own internals (e.g. the controller's
    "Failed to send resource request ... safe to ignore" with a traceback, whenever the CPUs
    are busy); a failure that matters reaches the sweep as the trial's error. Train still
    writes every level to its log files (``<ray session>/logs/train/``)."""
    return "INFO" if is_verbose() else "ERROR"
