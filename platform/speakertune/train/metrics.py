"""Per-trial metrics for the Ray dashboard: each epoch's report, exported through
``ray.util.metrics`` and so scraped from every node's Prometheus endpoint (Ray's metrics
agent, ``ray start --metrics-export-port``), where Ray's Grafana and
``docs/grafana/speakertune.json`` read them.

Every series is tagged ``sweep`` and ``trial`` (``t003-tdnn-aam_softmax``); dev EER and
minDCF also by ``backend`` (``cosine``, ``plda`` and ``ranked``, the one the trial ranks on).
Only the rank-0 worker exports (one series per trial), after its ``ray.train.report``.

Ray's metrics agent puts its namespace in front (``NAMESPACE = "ray"`` in
``ray/_private/telemetry/open_telemetry_metric_recorder.py``), so ``speakertune_epoch`` is
scraped as ``ray_speakertune_epoch`` (``PROMETHEUS_PREFIX``) and the counter gets the usual
``_total``. Gauges
live as long as the worker process that set them (Ray's metrics agent drops a gauge that
its process stopped re-sending after two report intervals), so a finished trial's series
ends there; Prometheus keeps the history.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from speakertune.metric_keys import RANKED_EER, VAL_BACKENDS, dev_eer, dev_min_dcf

PROMETHEUS_PREFIX = "ray_"  # what Ray's metrics agent prepends to every name
TAGS = ("sweep", "trial")
# report key -> (Prometheus name, description); one gauge each, tagged sweep and trial.
GAUGES = {
    "epoch": ("speakertune_epoch", "Epochs completed by the trial"),
    "train_loss": ("speakertune_train_loss", "Mean training loss of the last epoch"),
    "train_acc": ("speakertune_train_accuracy", "Training accuracy of the last epoch"),
    "lr": ("speakertune_learning_rate", "Learning rate at the end of the last epoch"),
    "utterances_per_s": ("speakertune_utterances_per_second",
                         "Training utterances per second, all workers of the trial"),
    "data_wait_frac": ("speakertune_data_wait_fraction",
                       "Share of training-loop time spent waiting for the next batch"),
    "gpu_peak_mem_mb": ("speakertune_gpu_peak_memory_mb",
                        "Peak GPU memory allocated by the rank-0 worker in the epoch (MiB)"),
    "epoch_time_s": ("speakertune_epoch_seconds", "Wall time of the last epoch"),
}
# backend tag -> report key of its dev EER / minDCF
EER_KEYS = {**{b: dev_eer(b) for b in VAL_BACKENDS}, "ranked": RANKED_EER}
DCF_KEYS = {b: dev_min_dcf(b) for b in VAL_BACKENDS}
UTTERANCES = ("speakertune_trained_utterances", "Utterances trained on, all workers")

_made: dict[str, Any] = {}  # Ray registers a metric once per process: build each once
_failed: list[str] = []


def _metrics() -> dict[str, Any]:
    if not _made:
        from ray.util.metrics import Counter, Gauge

        for key, (name, desc) in GAUGES.items():
            _made[key] = Gauge(name, desc, tag_keys=TAGS)
        _made["eer"] = Gauge("speakertune_dev_eer", "Dev EER of the last epoch, per backend",
                             tag_keys=(*TAGS, "backend"))
        _made["dcf"] = Gauge("speakertune_dev_min_dcf", "Dev minDCF of the last epoch",
                             tag_keys=(*TAGS, "backend"))
        _made["utts"] = Counter(*UTTERANCES, tag_keys=TAGS)
    return _made


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def metric_tags(sweep: str, trial: str) -> dict[str, str]:
    """The tags of one trial's series (Ray wants ``str`` values)."""
    return {"sweep": str(sweep), "trial": str(trial)}


def export_epoch(tags: dict[str, str] | None, metrics: dict[str, Any]) -> None:
    """Set this trial's gauges from one epoch's ``metrics`` (a worker's report dict) and add
    its ``train_utterances`` to the trial's counter. No-op without ``tags``; a failure is
    printed once and never stops training (monitoring is not worth a lost trial)."""
    if not tags or _failed:
        return
    try:
        made = _metrics()
        for key in GAUGES:
            value = _finite(metrics.get(key))
            if value is not None:
                made[key].set(value, tags=tags)
        for keys, gauge in ((EER_KEYS, made["eer"]), (DCF_KEYS, made["dcf"])):
            for backend, key in keys.items():
                value = _finite(metrics.get(key))
                if value is not None:
                    gauge.set(value, tags={**tags, "backend": backend})
        utterances = _finite(metrics.get("train_utterances"))
        if utterances:
            made["utts"].inc(utterances, tags=tags)
    except Exception as exc:  # noqa: BLE001 - see docstring
        _failed.append(str(exc))
        sys.stderr.write(f"[speakertune] Ray metrics export disabled: {exc}\n")
