"""Shared fixtures: a real local Ray cluster (one per test session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Export ray.util.metrics every second (default 10 s): test_dashboard_metrics scrapes them.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster with 2 CPUs, shared by every test that needs Ray."""
    import ray

    for attempt in range(3):  # a loaded box can miss the raylet's fixed start-up window
        if ray.is_initialized():
            break
        try:
            # address="local": never join a cluster some other `ray start` left in /tmp/ray
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (free ports, real credentials: a wrong secret
    is rejected). Yields a ``speakertune.testing.s3server.SeaweedS3``: ``.endpoint``,
    ``.access_key``,
    ``.secret_key``, ``.region``, ``.storage_options`` (for ``speakertune.data``),
    ``.make_bucket(name)``, ``.upload_dir(local, bucket, prefix)``, ``.client()`` (boto3)."""
    from speakertune.testing.s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic corpus of 8 speakers x 4 utterances (plus noise and RIR banks), built once
    per session; returns its root Path. Load it with ``load_corpus({"corpus": "synthetic",
    "root": str(root), "speakers": 8, "utts_per_speaker": 4, "val_speakers": 2})``."""
    from speakertune.data.synthetic import ensure_synthetic_corpus

    return ensure_synthetic_corpus(
        tmp_path_factory.mktemp("corpus") / "tiny", speakers=8, utts=4, seed=0, progress=None
    )


@pytest.fixture(scope="session")
def e2e_sweep(ray_local, tiny_corpus, tmp_path_factory):
    """The suite's one end-to-end sweep (``tests/e2e_sweep.py``: killed driver, resume,
    ASHA, two objectives, test list, fine-tuning, Prometheus scrapes), run once and checked by
    several modules."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from e2e_sweep import run_e2e

    return run_e2e(ray_local, tiny_corpus, tmp_path_factory.mktemp("e2e"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two intra-op threads spin against each other on the 2-core CI box; one is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
