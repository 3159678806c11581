"""A sweep on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: a
head and two worker nodes, each its own raylet) with SeaweedFS as ``--storage s3://``.

One scenario, in order: a local ``--storage`` is refused before anything starts; the 2-trial
sweep runs its trials on the worker nodes (the head has no CPU, so no Train worker or Ray Data
task fits there; the trial actors and their Train controllers sit on the head); one worker node
is removed mid-trial, which fails only that trial's Train worker group, and the trial
continues from its last S3 checkpoint on the other node; the driver is killed once a trial has
finished and ``--resume`` completes the sweep without losing or repeating a finished trial or a
finished epoch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_sweep import terminated_ids
from test_sweep import _tiny_space, _wait_for

pytestmark = [
    pytest.mark.slow,
]
REPO = Path(__file__).resolve().parents[1]
BUCKET, PREFIX, EPOCHS = "multinode", "sweeps", 5  # >= 2 epochs left after the loss
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


def _history(client, trial_prefix: str) -> list[dict]:
    """history.jsonl rows of a trial's Train run, as written (resumed epochs not merged)."""
    key = f"{trial_prefix}/history.jsonl"
    try:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _exists(client, key: str) -> bool:
    return client.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def _train_runs(client) -> dict[str, str]:
    """trial id -> S3 key prefix of its Train run."""
    root = f"{PREFIX}/tiny/train_runs/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=root,
                                                            Delimiter="/")  # fmt: skip
    return {p["Prefix"][len(root):-1]: p["Prefix"][:-1]
            for page in pages for p in page.get("CommonPrefixes", [])}  # fmt: skip


def _finished_in_state(client) -> set[str]:
    """Trial ids Tune's experiment state on S3 records as finished."""
    done = set()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/tiny/experiment_state-")
    for obj in listed.get("Contents", []):
        try:
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            done |= terminated_ids(json.loads(body))
        except (json.JSONDecodeError, client.exceptions.NoSuchKey):
            continue
    return done


def _agent_ports() -> dict[str, int]:
    """Free ports for a node's agents: left to Ray, the head's default dashboard-agent port
    (52365) clashes with any other Ray running on the machine."""
    socks = [socket.socket() for _ in range(4)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    keys = ("dashboard_agent_listen_port", "metrics_agent_port", "metrics_export_port",
            "runtime_env_agent_port")  # fmt: skip
    return dict(zip(keys, ports))


# On a loaded 2-core machine a raylet takes longer than Ray's fixed 30 s to register with the GCS
# (``Node.__init__`` polls ``services.get_node`` that long) and aborts when its dashboard agent
# is slow to publish its ports: both are given more time; neither is what this test is about.
NODE_START_WAIT_S = 120


def _raylet_died() -> bool:
    """A raylet this process started has exited (e.g. it aborted waiting for its agent)."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.name() == "raylet" and child.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            pass
    return False


def _patient(get_node, wait_s: float):
    """``ray._private.services.get_node`` retried for ``wait_s`` instead of failing at once;
    a dead raylet fails at once (the whole start is retried)."""
    def get(*args, **kwargs):
        end = time.monotonic() + wait_s
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > end or _raylet_died():
                    raise
                time.sleep(1.0)

    return get


def _start_cluster(attempts: int = 6):
    """A head with no CPU (every Train worker and Ray Data task runs on a worker node) and two
    3-CPU worker nodes, each its own raylet. A start that fails anyway is retried whole."""
    from ray._private import services
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "get_node", _patient(services.get_node, NODE_START_WAIT_S))
        patch.setenv("RAY_agent_register_timeout_ms", str(NODE_START_WAIT_S * 1000))
        patch.setenv("RAY_raylet_start_wait_time_s", str(NODE_START_WAIT_S))  # agent ports
        for attempt in range(attempts):
            cluster = None
            try:
                head = {"num_cpus": 0, "include_dashboard": False, **_agent_ports()}
                cluster = Cluster(initialize_head=True, head_node_args=head)
                nodes = [cluster.add_node(num_cpus=3, **_agent_ports()) for _ in range(2)]
                cluster.wait_for_nodes()
                return cluster, nodes
            except Exception:
                if cluster is not None:
                    cluster.shutdown()
                _end_own_ray_processes()  # a failed node start leaves its processes behind
                if attempt + 1 == attempts:
                    raise
    raise AssertionError("unreachable")


def _end_own_ray_processes() -> None:
    """Kill the Ray processes this test process started (its children, by id): a ``Cluster``
    whose head failed to start cannot shut them down, and they would hold its ports."""
    import psutil

    for child in psutil.Process().children():
        try:
            if "site-packages/ray/" in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:
            pass


def _released(log: str) -> str:
    """The resumed driver's line on placement groups the killed one left (a Ray race)."""
    lines = [ln for ln in log.splitlines() if "left by this sweep's killed driver" in ln]
    return lines[0].split("] ", 1)[-1] if lines else "no placement group left by the killed driver"


def _sweep(space: Path, storage: str, address: str, report: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs/sweep.py"), "--space", str(space), "--storage",
            storage, "--address", address, "--report-dir", str(report), *extra,
            # the corpus is on this one machine's disk: a shared mount for all 3 nodes
            *(["--shared-storage"] if storage.startswith("s3://") else [])]  # fmt: skip


def test_sweep_across_nodes_survives_a_lost_node_and_a_killed_driver(
    s3_server, tiny_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    import ray

    if ray.is_initialized():  # the suite's local Ray: Ray Train's helpers would see 2 clusters
        pytest.skip("needs to be the only Ray on the machine; `make test` runs it on its own")
    for key, value in (("AWS_ACCESS_KEY_ID", s3_server.access_key),
                       ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key),
                       ("AWS_ENDPOINT_URL", s3_server.endpoint),
                       ("AWS_REGION", s3_server.region)):  # fmt: skip
        monkeypatch.setenv(key, value)  # the raylets (and so every Ray worker) inherit these
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s3_server.make_bucket(BUCKET)
    client = s3_server.client()
    spec = _tiny_space(tiny_corpus)
    spec["base"]["trainer"]["epochs"] = EPOCHS
    spec["scheduler"] = {}  # FIFO: both trials run every epoch
    # a 2-CPU Train worker fits once on a 3-CPU node: one trial per node; 6 CPUs = 2 trials
    spec["resources"] = {"num_workers": 1, "cpus_per_worker": 2, "data_cpus": 1}
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(spec))
    storage, report = f"s3://{BUCKET}/{PREFIX}", tmp_path / "report"

    cluster, nodes = _start_cluster()
    by_id = {n.node_id: n for n in nodes}
    try:
        t0 = time.monotonic()
        refused = subprocess.run(_sweep(space, str(tmp_path / "runs"), cluster.address, report),
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        err = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "has 3 nodes" in err[0] and "--storage s3://" in err[0]
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "runs").exists()

        log = open(tmp_path / "driver1.log", "w")
        t_driver = time.monotonic()
        proc = subprocess.Popen(_sweep(space, storage, cluster.address, report), cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def both_started() -> bool:
                # an epoch is finished once its history row is written *and* Ray Train has
                # registered its checkpoint (the controller then writes its snapshot): a node
                # lost in between would rightly redo that epoch
                runs = _train_runs(client)
                return len(runs) == 2 and all(
                    _history(client, p) and _exists(client, f"{p}/{SNAPSHOT}")
                    for p in runs.values())  # fmt: skip

            _wait_for(both_started, 600, "both trials' first epoch", proc)
            first_epoch_s = time.monotonic() - t_driver  # sweep start -> both epoch 1 on S3
            seen = {t: _history(client, p) for t, p in _train_runs(client).items()}
            on = {t: h[0]["train_node_id"] for t, h in seen.items()}
            assert set(on.values()) == set(by_id), on  # one trial per worker node, none on head
            # the trial that is behind loses its node: the other may have started much earlier
            # and be near its last epoch (CI saw it finish before its node was removed)
            lost_trial = min(on, key=lambda t: (len(seen[t]), t))
            before = len(seen[lost_trial])  # its epochs finished before the node goes
            lost_node = on[lost_trial]
            cluster.remove_node(by_id[lost_node])
            kept = next(n for n in by_id if n != lost_node)
            other = next(t for t in on if t != lost_trial)
            _wait_for(lambda: other in _finished_in_state(client), 600, "a finished trial", proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver dies without any cleanup
            proc.wait(30)
            log.close()
        runs = _train_runs(client)
        done_rows = _history(client, runs[other])
        assert [r["epoch"] for r in done_rows] == list(range(1, EPOCHS + 1))
        assert not (report / "tiny" / "leaderboard.csv").exists()

        with open(tmp_path / "driver2.log", "w") as log2:  # readable even after a timeout
            resumed = subprocess.run(_sweep(space, storage, cluster.address, report, "--resume"),
                                     stdout=log2, stderr=subprocess.STDOUT, timeout=900,
                                     cwd=tmp_path)  # fmt: skip
        out = (tmp_path / "driver2.log").read_text()
        assert resumed.returncode == 0, out[-5000:]
        took = time.monotonic() - t0
    finally:
        cluster.shutdown()

    assert "[fixed rule]" in (tmp_path / "driver1.log").read_text()
    df = pd.read_csv(report / "tiny" / "leaderboard.csv")
    assert sorted(df["trial"].astype(str)) == sorted(on)  # nothing lost, nothing repeated
    assert _history(client, runs[other]) == done_rows  # the finished trial was not run again
    rows = _history(client, runs[lost_trial])
    epochs = [r["epoch"] for r in rows]
    where = [(r["epoch"], r["train_node_id"][:8]) for r in rows]
    assert before <= EPOCHS - 2, (before, where)  # else no epoch is sure to run after the loss
    # continuity: every epoch, in order, from the last S3 checkpoint on; no finished epoch is
    # repeated. An epoch's row is written just before Ray Train registers its checkpoint, so
    # the last row seen before the loss or the epoch in flight may have no registered
    # checkpoint yet: that one epoch may appear twice, its first row from the lost node, then
    # rightly redone on the kept node (read_history keeps the last row of an epoch).
    in_flight = before + 1
    assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)) and epochs == sorted(epochs), where
    repeated = sorted({e for e in epochs if epochs.count(e) > 1})
    assert repeated in ([], [before], [in_flight]), where
    for e in repeated:
        first, again = [r["train_node_id"] for r in rows if r["epoch"] == e]
        assert (first, again) == (lost_node, kept), where
    assert all(r["train_node_id"] == lost_node for r in rows[:before]), where
    # the epoch in flight may still finish on the lost node; every later one cannot
    assert all(r["train_node_id"] == kept for r in rows if r["epoch"] > in_flight), (where, kept)
    moved = [r["epoch"] for r in rows if r["train_node_id"] == kept]
    assert moved and moved[-1] == EPOCHS, (where, kept)
    assert all(r["train_node_id"] in by_id for r in rows + done_rows)
    progress = client.get_object(Bucket=BUCKET, Key=f"{runs[lost_trial]}/progress.log")
    assert f"resumed from checkpoint after epoch {moved[0] - 1}" in progress["Body"].read().decode()
    # both drivers recorded themselves: the resumed one knew the killed one's groups as its own
    ledger = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/tiny/drivers.txt")["Body"].read()
    drivers = [ln.split(":") for ln in ledger.decode().split()]
    assert len(drivers) == 2 and drivers[0][0] == drivers[1][0] and drivers[0] != drivers[1]
    events = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{runs[lost_trial]}/tensorboard/")
    assert len(events.get("Contents", [])) >= EPOCHS  # one event file per epoch (+ the DET)
    print(f"multi-node scenario took {took:.0f} s; both trials' first epoch on the worker "
          f"nodes was on S3 {first_epoch_s:.0f} s after the sweep started; epochs done at the "
          f"loss: {before} of the lost trial, {len(seen[other])} of the other; {where}; "
          f"{_released(out)}")
