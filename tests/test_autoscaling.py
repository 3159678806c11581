"""A sweep on a cluster that Ray's real autoscaler grows and shrinks: Ray's fake multi-node
provider (``provider: type: fake_multinode``: the autoscaler's own code, each "instance" a
raylet started on this machine) with ``cluster.yaml``'s node types scaled down.

In order: a local ``--storage`` is refused (the cluster autoscales, though only its head is up);
the 2-trial sweep, started as a user would (``jobs/sweep.py --address`` with the published
corpus and ``--storage s3://`` on SeaweedFS, ``--cluster-config`` naming the file the
autoscaler runs with), plans its concurrency by the autoscaling rule; its trials' pending Train
placement groups make the autoscaler launch ``gpu_g5`` stand-ins (not the 8-GPU ``gpu_p4d``),
each trial trains on one of them, both finish and are in the report; then the idle workers
are removed and only the head is left.

Stand-ins, because this machine has no GPU: each GPU of a type becomes the CPUs of one trial
(a Train worker's ``cpus_per_worker`` in place of its GPU, plus its Ray Data task), so a
Train worker bundle fits only the former GPU types, and ``cpu_data`` keeps fewer CPUs than one
Train worker asks for (a node without a GPU cannot host a Train worker). What this cannot
show: a real cloud provider (instances that take minutes to boot, quotas, SSH setup of new
nodes), real GPUs and NCCL between nodes. ``ray.cluster_utils.AutoscalingCluster`` is not
used: its ``start``/``shutdown`` run ``ray stop --force`` (every Ray on the machine) and it
reads ``fake_multi_node/example.yaml``, which the Ray wheel does not ship; the head is started
here with the same ``ray start --head --autoscaling-config`` and ``RAY_FAKE_CLUSTER=1``, on
free ports, and stopped by killing only its own processes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_sweep import tiny_space, wait_for

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
BUCKET, PREFIX = "autoscaling", "sweeps"
# The fake provider tags the head with this type name (``FAKE_HEAD_NODE_TYPE``): cluster.yaml's
# ``head`` type goes by it here.
FAKE_HEAD_TYPE = "ray.head.default"
# A trial: one Train worker of 2 CPUs (the stand-in of its one GPU) and one Ray Data CPU.
CPUS_PER_WORKER, DATA_CPUS = 2, 1
# cluster.yaml's max_workers per type, scaled down: a g5 per trial and one spare (the
# autoscaler may act on a resource report a second old that still shows a placed placement
# group as pending; at its g5 limit it would launch a p4d for it), one of each other type.
SCALED_MAX = {"gpu_g5": 3, "gpu_p4d": 1, "cpu_data": 1}
IDLE_TIMEOUT_MIN = 0.2  # cluster.yaml: 10 minutes
NODE_START_WAIT_S = 120
FAKE_HEAD_ID = "f" * 51 + "00000"  # the fake provider's head node id (``FAKE_HEAD_NODE_ID``)
NODES_PROBE = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
end = time.monotonic() + float(sys.argv[2])
while True:
    nodes = ray.nodes()
    if sum(n["Alive"] for n in nodes) == 1 or time.monotonic() >= end:
        break
    time.sleep(1)
print(json.dumps(nodes, default=str))
"""
# The rest of Ray's fake_multi_node/example.yaml (the keys the autoscaler reads; no setup or
# start commands: the provider starts each node's raylet itself).
FAKE_PROVIDER = {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True,
                 "launch_multiple": True}  # each node the autoscaler asks for, at once
FAKE_REST = {"auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [],
             "head_setup_commands": [], "worker_setup_commands": [],
             "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
             "cluster_synced_files": [], "file_mounts_sync_continuously": False,
             "rsync_exclude": [], "rsync_filter": []}  # fmt: skip


def scaled_config(cluster_yaml: Path, gcs_address: str) -> dict:
    """cluster.yaml's node types as a fake_multinode autoscaler config, scaled down: each type
    keeps its GPU count; a GPU type gets one trial's CPUs per GPU (its Train worker's and its
    Ray Data task's), a type without GPUs fewer CPUs than one Train worker asks for."""
    real = yaml.safe_load(cluster_yaml.read_text())
    types = real["available_node_types"]
    assert set(types) == {"head", *SCALED_MAX} and real["head_node_type"] == "head", types

    def resources(name: str) -> dict[str, int]:
        gpus = int(types[name]["resources"].get("GPU", 0))
        return {"CPU": gpus * (CPUS_PER_WORKER + DATA_CPUS) if gpus else CPUS_PER_WORKER - 1,
                "GPU": gpus}  # fmt: skip

    out = {FAKE_HEAD_TYPE: {"resources": resources("head"), "node_config": {},
                            "max_workers": 0}}  # fmt: skip
    for name, cap in SCALED_MAX.items():
        assert types[name]["max_workers"] >= cap
        out[name] = {"resources": resources(name), "node_config": {}, "min_workers": 0,
                     "max_workers": cap}  # fmt: skip
    return {"cluster_name": real["cluster_name"], "max_workers": sum(SCALED_MAX.values()),
            "upscaling_speed": real["upscaling_speed"], "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
            "provider": {**FAKE_PROVIDER, "gcs_address": gcs_address},
            "available_node_types": out, "head_node_type": FAKE_HEAD_TYPE, **FAKE_REST}  # fmt: skip


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class FakeCluster:
    """``ray start --head --autoscaling-config`` with ``RAY_FAKE_CLUSTER=1`` (what
    ``AutoscalingCluster.start`` runs) on free ports, with its own Ray temp dir (its
    ``ray_current_cluster`` file, sockets and logs) and its own auth token; ``stop`` kills only
    the processes that carry that temp dir in their environment (head, autoscaler, the worker
    raylets it started and every Ray worker), never other Rays on the machine."""

    def __init__(self, cluster_yaml: Path, env: dict[str, str]) -> None:
        import ray._private.services as services

        # short: Ray's unix sockets live under it (108-byte limit)
        self.tmp = tempfile.mkdtemp(prefix="rayas", dir="/tmp")
        gcs, *self.ports = _free_ports(7)
        self.address = f"{services.get_node_ip_address()}:{gcs}"
        self.config_path = Path(self.tmp) / "autoscaler.yaml"
        self.config = scaled_config(cluster_yaml, self.address)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        token = Path(self.tmp) / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**env, "RAY_TMPDIR": self.tmp, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
                    # as test_multinode: a raylet on a loaded 2-core machine waits longer for
                    # its agents instead of aborting (the worker nodes' raylets inherit these)
                    "RAY_agent_register_timeout_ms": str(NODE_START_WAIT_S * 1000),
                    "RAY_raylet_start_wait_time_s": str(NODE_START_WAIT_S)}
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(key, None)

    def start(self, attempts: int = 3) -> FakeCluster:
        """On a loaded 2-core machine the head can miss Ray's fixed 30 s wait for its raylet
        to register: a failed start is cleaned up and retried whole."""
        client, agent, export, runtime_env, grpc, dashboard = self.ports
        head = self.config["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        cmd = [RAY, "start", "--head", f"--port={self.address.rsplit(':', 1)[1]}",
               f"--num-cpus={head['CPU']}", f"--num-gpus={head['GPU']}",
               f"--autoscaling-config={self.config_path}",
               # as cluster.yaml, the dashboard on loopback (Ray Train's placement-group
               # cleaner asks its state API whether a controller is alive)
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
               f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={export}",
               f"--runtime-env-agent-port={runtime_env}", f"--dashboard-agent-grpc-port={grpc}",
               "--disable-usage-stats"]  # fmt: skip
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        for attempt in range(attempts):
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if run.returncode == 0:
                return self
            self.stop()
            if attempt + 1 == attempts:
                raise AssertionError(run.stdout[-3000:] + run.stderr[-3000:])
        raise AssertionError("unreachable")

    @property
    def monitor_log(self) -> str:
        path = Path(self.tmp) / "ray" / "session_latest" / "logs" / "monitor.log"
        return path.read_text() if path.exists() else ""

    def status(self) -> str:
        """``ray status``: the autoscaler's view (nodes by type, pending demands)."""
        run = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        return run.stdout + run.stderr

    def nodes(self, wait_for_head_only: float = 0) -> list[dict]:
        """``ray.nodes()`` of the cluster, from a driver of its own (this process must not
        join: Ray reads its auth mode once per process); with ``wait_for_head_only``, once
        only the head is alive or after that many seconds."""
        run = subprocess.run([sys.executable, "-c", NODES_PROBE, self.address,
                              str(wait_for_head_only)], env=self.env, capture_output=True,
                             text=True, timeout=wait_for_head_only + 120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    def own_processes(self) -> list:
        import psutil  # Ray's vendored copy (ray/thirdparty_files), importable after `import ray`

        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("RAY_TMPDIR") == self.tmp:
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        import psutil

        procs = self.own_processes()
        monitor = [p for p in procs if "monitor.py" in " ".join(_cmdline(p))]
        for group in (monitor, procs):  # the autoscaler first: it would start nodes again
            for proc in group:
                try:
                    proc.terminate()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(group, timeout=10)
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        psutil.wait_procs(procs, timeout=10)

    def remove(self, keep_logs: Path) -> None:
        """Delete the temp dir; the autoscaler's and the raylets' logs are kept in
        ``keep_logs``."""
        logs = Path(self.tmp) / "ray" / "session_latest" / "logs"
        if logs.is_dir():
            keep_logs.mkdir(parents=True, exist_ok=True)
            for f in logs.iterdir():
                if f.is_file() and f.name.startswith(("monitor", "raylet", "gcs_server")):
                    shutil.copy(f, keep_logs / f.name)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # noqa: BLE001 - gone or not ours
        return []


def _launched(monitor_log: str, verb: str) -> dict[str, int]:
    """Nodes per type the autoscaler's event summaries report as added or removed."""
    pattern = (r":event_summary:Adding (\d+) node\(s\) of type (\S+)\." if verb == "add" else
               r":event_summary:Removing (\d+) nodes of type (\S+) \(idle\)")  # fmt: skip
    out: dict[str, int] = {}
    for n, kind in re.findall(pattern, monitor_log):
        out[kind] = out.get(kind, 0) + int(n)
    return out


def _history(client, trial_prefix: str) -> list[dict]:
    """history.jsonl rows of a trial's Train run (one per finished epoch)."""
    try:
        body = client.get_object(Bucket=BUCKET, Key=f"{trial_prefix}/history.jsonl")["Body"]
    except client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.read().decode().splitlines() if line.strip()]


def _train_runs(client) -> dict[str, str]:
    """trial id -> S3 key prefix of its Train run."""
    root = f"{PREFIX}/tiny/train_runs/"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=root, Delimiter="/")
    return {p["Prefix"][len(root):-1]: p["Prefix"][:-1]
            for p in listed.get("CommonPrefixes", [])
            if not p["Prefix"][len(root):].startswith(".")}  # fmt: skip


def _sweep(space: Path, storage: str, cluster: FakeCluster, report: Path) -> list[str]:
    return [sys.executable, str(REPO / "jobs/sweep.py"), "--space", str(space),
            "--data", f"s3://{BUCKET}/corpus/manifest.parquet", "--storage", storage,
            "--address", cluster.address, "--cluster-config", str(cluster.config_path),
            "--report-dir", str(report)]  # fmt: skip


def test_autoscaler_launches_the_right_workers_for_a_sweep_and_removes_them(
    s3_server, tiny_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    import ray

    if ray.is_initialized():  # the suite's local Ray: Ray Train's helpers would see 2 clusters
        pytest.skip("needs to be the only Ray on the machine; `make test` runs it on its own")
    aws = {"AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": s3_server.region}
    for key, value in aws.items():
        monkeypatch.setenv(key, value)  # the head, the autoscaler and so every node inherit them
    s3_server.make_bucket(BUCKET)
    client = s3_server.client()
    from speakertune.commands import prepare

    assert prepare.main(["publish", str(tiny_corpus), f"s3://{BUCKET}/corpus"]) == 0
    spec = tiny_space(tiny_corpus)
    for key in ("corpus", "root", "speakers", "utts_per_speaker"):  # the local corpus:
        del spec["base"]["data"][key]  # the published one comes in with --data, as on a cluster
    spec["scheduler"] = {}  # FIFO: both trials run every epoch
    spec["resources"] = {"num_workers": 1, "cpus_per_worker": CPUS_PER_WORKER,
                         "data_cpus": DATA_CPUS}  # fmt: skip
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(spec))
    storage, report = f"s3://{BUCKET}/{PREFIX}", tmp_path / "report"

    cluster = FakeCluster(REPO / "cluster.yaml", dict(os.environ))
    t0 = time.monotonic()
    try:
        cluster.start()
        t_up = time.monotonic() - t0
        # the autoscaler runs with the file the sweep is given
        monitors = [_cmdline(p) for p in cluster.own_processes()
                    if "monitor.py" in " ".join(_cmdline(p))]  # fmt: skip
        assert any(f"--autoscaling-config={cluster.config_path}" in c for c in monitors), monitors

        refused = subprocess.run(_sweep(space, str(tmp_path / "runs"), cluster, report),
                                 capture_output=True, text=True, timeout=180, cwd=tmp_path,
                                 env=cluster.env)  # fmt: skip
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        err = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "autoscales" in err[0] and "--storage s3://" in err[0], err
        assert "[autoscaling rule]" in refused.stdout
        assert not (tmp_path / "runs").exists()

        assert [n["NodeID"] for n in cluster.nodes() if n["Alive"]] == [FAKE_HEAD_ID]
        log_path = tmp_path / "driver.log"
        t_sweep = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(_sweep(space, storage, cluster, report), cwd=tmp_path,
                                    env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                def both_training() -> bool:
                    runs = _train_runs(client)
                    return len(runs) == 2 and all(_history(client, p) for p in runs.values())

                wait_for(both_training, 300, "both trials' first epoch", proc)
                peak_status = cluster.status()
                nodes = {n["NodeID"]: n for n in cluster.nodes()}
                proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
        sweep_s = time.monotonic() - t_sweep
        out = log_path.read_text()
        assert proc.returncode == 0, out[-6000:]

        t_done = time.monotonic()
        final = cluster.nodes(wait_for_head_only=180)
        left = [n["NodeID"] for n in final if n["Alive"]]
        idle_s = time.monotonic() - t_done
        assert left == [FAKE_HEAD_ID], left  # every worker removed, the head kept
        monitor_log = cluster.monitor_log
    finally:
        cluster.stop()
        cluster.remove(keep_logs=tmp_path / "ray_logs")
    took = time.monotonic() - t0
    assert not cluster.own_processes()

    start = [ln for ln in out.splitlines() if "[autoscaling rule]" in ln]
    assert len(start) == 1 and "up now: 1 CPU + 0 GPU" in start[0], start  # the head only
    assert f"(config {cluster.config_path})" in start[0] and start[0].startswith("2 concurrent")
    # each trial's Train worker ran on a gpu_g5 node of its own, which the autoscaler launched
    # for the pending Train placement groups: a 2-CPU bundle fits neither the 1-CPU head nor
    # cpu_data, and of the types it fits the autoscaler picks the 1-GPU type over the 8-GPU one
    added, removed = _launched(monitor_log, "add"), _launched(monitor_log, "remove")
    runs = _train_runs(client)
    on = {t: {r["train_node_id"] for r in _history(client, p)} for t, p in runs.items()}
    assert len(runs) == 2 and all(len(n) == 1 for n in on.values()), on
    workers = set().union(*on.values())
    assert len(workers) == 2, on  # one node per trial: a g5 holds one Train worker
    g5 = cluster.config["available_node_types"]["gpu_g5"]["resources"]
    for node in workers:
        assert node.startswith("f" * 51) and node != FAKE_HEAD_ID, node  # the provider's ids
        have = {k: nodes[node]["Resources"].get(k, 0) for k in ("CPU", "GPU")}
        assert have == g5, (node[-5:], have)
    assert added.get("gpu_g5", 0) >= 2 and "gpu_p4d" not in added, added
    assert "gpu_g5" in peak_status, peak_status
    # the report lists both finished trials
    board = pd.read_csv(report / "tiny" / "leaderboard.csv")
    assert sorted(board["trial"].astype(str)) == sorted(runs), board.to_string()
    assert board["val_eer"].notna().all(), board.to_string()
    assert (board["status"] == "TERMINATED").all(), board.to_string()
    # idle workers went away: every node the autoscaler added was removed as idle, and every
    # node that ever joined, except the head, is dead
    assert removed == added, (added, removed)
    assert len([n for n in final if not n["Alive"]]) == sum(added.values()), (added, final)
    print(f"autoscaling scenario took {took:.0f} s (head up in {t_up:.0f} s, sweep "
          f"{sweep_s:.0f} s, idle workers gone {idle_s:.0f} s after it); nodes added by type "
          f"{added}, removed as idle {removed}; `ray status` at both trials' first epoch:\n"
          f"{peak_status}")
