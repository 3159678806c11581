"""One trial = one Ray Train ``TorchTrainer`` run (DDP: gloo on CPU, NCCL on GPU): the driver
side (or the Tune trial's).

The driver merges the config over the defaults once, checks it, loads the corpus, builds the
Ray Data training pipeline and hands both to the workers (``speakertune.train.worker``). It is
also the one place that knows what a trial holds (``trial_resources``), which the sweep sizes
its concurrency by.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from speakertune.config import DEFAULTS, deep_merge
from speakertune.quiet import train_log_level
from speakertune.train import credentials
from speakertune.train.preflight import build_parts, check_config
from speakertune.train.progress import read_history
from speakertune.train.worker import train_loop_per_worker


class TrainerError(RuntimeError):
    """A trial cannot be set up or run; the message names the config key or file."""


def resolved(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over the defaults, so every key the loop reads exists."""
    return deep_merge(DEFAULTS, cfg or {})


def _gpus_per_worker(t: dict[str, Any]) -> float:
    return float(t["gpus_per_worker"]) if t["use_gpu"] else 0.0


def trial_resources(cfg: dict[str, Any]) -> dict[str, float]:
    """CPUs and GPUs one trial holds at once: its Train workers plus its Ray Data CPUs."""
    t = resolved(cfg)["trainer"]
    n = int(t["num_workers"])
    return {
        "CPU": n * float(t["cpus_per_worker"]) + float(t["data_cpus"] or 0),
        "GPU": n * _gpus_per_worker(t),
    }


def _scaling_config(cfg: dict[str, Any]):
    from ray.train import ScalingConfig

    t = cfg["trainer"]
    per_worker = {"CPU": float(t["cpus_per_worker"])}
    if t["use_gpu"]:
        per_worker["GPU"] = _gpus_per_worker(t)
    n = int(t["num_workers"])
    return ScalingConfig(
        num_workers=n, use_gpu=bool(t["use_gpu"]), resources_per_worker=per_worker,
        # DDP's all-reduce every step: all of a trial's workers on one node (NVLink, not TCP)
        placement_strategy="STRICT_PACK" if n > 1 else "PACK",
    )


def _records(df: pd.DataFrame, cols: list[str]) -> dict[str, list]:
    return {c: df[c].astype(str).tolist() for c in cols}


def prepare(cfg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Load the corpus and build the training dataset of a resolved ``cfg``: returns
    ``(meta, dataset)``, where ``meta`` is everything the workers need besides the config
    (small, pickled once)."""
    from speakertune.data.corpus import load_corpus
    from speakertune.data.plda_sample import plda_sample
    from speakertune.frontend.augment import num_classes_multiplier
    from speakertune.frontend.features import feature_dim
    from speakertune.frontend.stream import build_train_dataset

    t = cfg["trainer"]
    corpus = load_corpus(cfg["data"])
    # Speed perturbation "as new speakers" widens the classifier (the front end decides).
    multiplier = int(num_classes_multiplier(cfg))
    seed = int(t["seed"])
    sample = plda_sample(corpus.train, int(t["plda_utts"]), int(t["plda_utts_per_speaker"]), seed)
    trials = corpus.trials
    meta = {
        "num_classes": int(corpus.num_classes) * multiplier,
        "feat_dim": int(feature_dim(cfg)),
        "num_train": len(corpus.train),
        "num_train_speakers": int(corpus.train["spk"].nunique()),
        "val": _records(corpus.val, ["utt", "spk", "uri"]),
        "plda": _records(sample, ["utt", "spk", "uri"]),
        "trials": {
            "enroll": trials["enroll"].astype(str).tolist(),
            "test": trials["test"].astype(str).tolist(),
            "label": trials["label"].astype(int).tolist(),
        },
        "storage_options": dict(corpus.storage_options or {}),
    }
    dataset = build_train_dataset(corpus, cfg, epoch_seed=seed)
    meta["skip_counter"] = dataset.skip_counter  # a Ray actor handle: pickles to the workers
    meta["frontend"] = dataset.worker_frontend  # None unless the workers featurise
    return meta, dataset


def _run_dir(storage_path: str, name: str) -> str:
    """The Train run's directory: a local path, or a URI under ``s3://...`` storage (the
    progress files and TensorBoard events go there through ``data.storage``)."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{name}"
    return os.path.join(os.path.abspath(storage_path), name)


def make_trainer(
    cfg: dict[str, Any],
    *,
    storage_path: str,
    name: str,
    callbacks: list | None = None,
    max_failures: int = 2,
    metric_tags: dict[str, str] | None = None,
    feature_cache: str | None = None,
):
    """A ``TorchTrainer`` for one trial; ``fit()`` runs it. ``callbacks`` are Ray Train
    ``UserCallback`` objects (e.g. Tune's ``TuneReportCallback`` inside a Tune trial);
    ``metric_tags`` tag its Ray dashboard metrics (``train.metrics``; default: no sweep,
    the run ``name`` as trial); ``feature_cache``: a local folder where runs that validate on
    the same utterances share their features (a sweep's trials; ``scoring.feature_cache``)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = resolved(cfg)  # the one merge: workers read every trainer key without defaults
    check_config(cfg)
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    meta, dataset = prepare(cfg)
    build_parts(cfg, meta["feat_dim"], meta["num_classes"])  # a bad option fails here, once
    meta["run_dir"] = _run_dir(storage_path, name)
    meta["feature_cache"] = feature_cache
    meta["storage_uri"] = f"{storage_path.rstrip('/')}/{name}"
    meta["metric_tags"] = metric_tags or {"sweep": "-", "trial": name}
    cfg, meta = credentials.seal(cfg, meta)  # Train's run state (served) keeps the config
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=FailureConfig(max_failures=max_failures),
        # Ray keeps the latest checkpoint too (for resuming), besides the best ``keep``.
        checkpoint_config=CheckpointConfig(
            num_to_keep=int(cfg["trainer"]["checkpoints_to_keep"]),
            checkpoint_score_attribute="val_eer", checkpoint_score_order="min",
        ),
        callbacks=list(callbacks or []),
        # Train's per-epoch INFO lines (reports, checkpoints) only with ``--verbose``.
        logging_config=LoggingConfig(log_level=train_log_level()),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "meta": meta},
        torch_config=TorchConfig(backend="nccl" if cfg["trainer"]["use_gpu"] else "gloo"),
        scaling_config=_scaling_config(cfg),
        run_config=run_config,
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def train(cfg: dict[str, Any], *, storage_path: str = "runs", name: str | None = None) -> dict:
    """Fit one configuration; returns the last reported metrics plus ``checkpoint`` (path of
    the latest checkpoint), ``best_checkpoint``, ``run_dir`` and ``history`` (per epoch)."""
    name = name or time.strftime("train_%Y%m%d_%H%M%S")
    from ray.train import TrainingFailedError

    try:
        result = make_trainer(cfg, storage_path=storage_path, name=name).fit()
    except TrainingFailedError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainerError(f"training run {name!r} failed: {first}") from exc
    out = dict(result.metrics or {})
    out["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    best = result.get_best_checkpoint("val_eer", "min") if result.checkpoint else None
    out["best_checkpoint"] = best.path if best else None
    out["run_dir"] = _run_dir(storage_path, name)
    out["history"] = read_history(out["run_dir"])
    return out
