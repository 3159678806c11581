"""One end-to-end sweep on real Ray that several test modules check (session fixture
``e2e_sweep`` in conftest.py): a sweep is the suite's most expensive step, so each feature that
needs one asserts on this run instead of starting its own.

The run, in order:

1. ``jobs/sweep.py`` (the user's command, its own local Ray) is killed with SIGKILL once one
   trial has finished (test_sweep: nothing lost or repeated on resume);
2. ``run_sweep(resume=True)`` finishes it on the session's Ray while the node's Prometheus
   endpoint is scraped every second and a real Prometheus (Debian's ``prometheus``, on
   127.0.0.1 with Ray's scrape configuration for the session) scrapes it every 2 s into a TSDB
   that test_dashboard_metrics queries with the Grafana dashboard's panel queries;
3. the space ranks 3 trials on two objectives, dev EER and parameters (test_pareto), with ASHA
   stopping trials (test_sweep: no CPU leaked afterwards), scores the top trial on a test list
   after ranking (test_holdout) and fine-tunes it with a larger margin (test_pareto).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NAME = "e2e"
PROMETHEUS_SCRAPE_S = 2  # Ray's config says 10 s: too few samples of a short sweep


def tiny_space(corpus: Path, num_samples: int = 2) -> dict:
    """The smallest sweep that still trains: 8 speakers, a 16-channel TDNN, 2 epochs."""
    return {
        "name": "tiny",
        "base": {
            "data": {"corpus": "synthetic", "root": str(corpus), "speakers": 8,
                     "utts_per_speaker": 4, "val_speakers": 2, "val_trials": 24,
                     "min_seconds": 0.5, "max_seconds": 1.0},
            "features": {"name": "fbank", "num_mel_bins": 24},
            "embed_dim": 16,
            "trainer": {"epochs": 2, "batch_size": 8},
        },
        "components": {"model": {"tdnn": {"channels": 16, "out_channels": 32}}},
        "params": {
            "model.name": {"choice": ["tdnn"]},
            "loss.name": {"choice": ["softmax", "aam_softmax"]},
            "loss.margin": {"uniform": [0.1, 0.3], "when": {"loss.name": "aam_softmax"}},
            "optimizer.lr": {"loguniform": [1e-3, 1e-2]},
        },
        "search": {"num_samples": num_samples, "seed": 3},
        "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
    }  # fmt: skip


def write_test_list(corpus: Path, out: Path) -> list[str]:
    """All pairs of two speakers' utterances (the first two speakers of the corpus)."""
    from speakertune.data.manifest import read_manifest

    df = read_manifest(corpus / "manifest.parquet")
    spks = sorted(df["spk"].unique())[:2]
    utts = sorted(df.loc[df["spk"].isin(spks), "utt"])
    spk = dict(zip(df["utt"], df["spk"]))
    out.write_text("".join(f"{a} {b} {int(spk[a] == spk[b])}\n"
                           for i, a in enumerate(utts) for b in utts[i + 1:]))  # fmt: skip
    return spks


def e2e_space(corpus: Path, trials: Path) -> dict:
    """3 trials, ASHA, two objectives; learning rates far apart so ASHA stops the worse ones,
    two widths so the trials differ in parameters; a test list and a fine-tuning section."""
    space = tiny_space(corpus, num_samples=3)
    space["name"] = NAME
    base = space["base"]
    base["model"] = {"name": "tdnn", "out_channels": 32}
    base["loss"] = {"name": "aam_softmax", "margin": 0.2, "scale": 30.0}
    base["trainer"].update(plda_utts=16)
    base["data"]["test"] = {"o": {"trials": str(trials)}}
    space["components"] = {}
    space["params"] = {"model.channels": {"choice": [8, 32]},
                       "optimizer.lr": {"choice": [0.02, 1e-6]}}
    # seed 0: the three trials differ (Optuna 4 draws (32, 0.02), (32, 1e-6), (8, 0.02))
    space["search"].update(objectives=["dev_eer", "params"], test_top_k=1, seed=0)
    space["finetune"] = {"top_k": 1, "epochs": 1, "margin": 0.4, "crop_seconds": 1.5,
                         "lr_scale": 0.1}
    return space


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def terminated_ids(state: dict) -> set[str]:
    """Trial ids one parsed Tune ``experiment_state-*.json`` records as finished."""
    trials = (json.loads(trial_json) for trial_json, _ in state.get("trial_data", []))
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def terminated_in_state(exp: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state records as finished."""
    done = set()
    for f in exp.glob("experiment_state-*.json"):
        try:
            done |= terminated_ids(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):  # being rewritten right now
            continue
    return done


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every ``ray_speakertune_*`` sample on the node's
    Prometheus endpoint, the name without Ray's prefix."""
    from prometheus_client.parser import text_string_to_metric_families
    from speakertune.train.metrics import PROMETHEUS_PREFIX

    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:  # a busy agent: the next poll will do
        return []
    return [
        (s.name.removeprefix(PROMETHEUS_PREFIX), dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(f"{PROMETHEUS_PREFIX}speakertune_")
    ]


def ray_prometheus_config(session_dir: Path, out: Path) -> Path:
    """Ray's Prometheus configuration for the session, written to ``out/prometheus.yml`` with
    only the scrape and evaluation intervals changed (``PROMETHEUS_SCRAPE_S``).

    Ray's dashboard process writes ``<session>/metrics/prometheus/prometheus.yml``
    (``metrics_head``: ``PROMETHEUS_YML_TEMPLATE``, one ``ray`` job with file-based service
    discovery) and keeps ``<session>/prom_metrics_service_discovery.json`` current
    (``reporter_head``'s ``PrometheusServiceDiscoveryWriter``: every live node's
    ``NodeManagerAddress:MetricsExportPort`` every 5 s). The suite's Ray runs without a
    dashboard and so has neither; then both are made here as Ray would make them (Ray's
    template, the writer's content for the nodes alive now: one node, no autoscaler or
    dashboard metrics address)."""
    import ray
    import yaml
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE
    from ray.dashboard.modules.metrics.templates import PROMETHEUS_YML_TEMPLATE

    out.mkdir(parents=True, exist_ok=True)
    ray_yml = session_dir / "metrics" / "prometheus" / "prometheus.yml"
    discovery = session_dir / PROMETHEUS_SERVICE_DISCOVERY_FILE
    if ray_yml.exists() and discovery.exists():
        config = yaml.safe_load(ray_yml.read_text())
    else:
        discovery = out / PROMETHEUS_SERVICE_DISCOVERY_FILE
        targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
                   for n in ray.nodes() if n["Alive"]]  # fmt: skip
        discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
        config = yaml.safe_load(PROMETHEUS_YML_TEMPLATE.format(
            prom_metrics_service_discovery_file_path=discovery))  # fmt: skip
    config["global"].update(scrape_interval=f"{PROMETHEUS_SCRAPE_S}s",
                            evaluation_interval=f"{PROMETHEUS_SCRAPE_S}s")  # fmt: skip
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1 (a free port), its TSDB in ``data``: started by
    the sweep to scrape it, and again on the same ``data`` (a config without targets) by the
    test that queries what was scraped."""

    def __init__(self, config: Path, data: Path) -> None:
        self.config, self.data = config, data
        self.log = data.parent / f"{data.name}.{config.stem}.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60) -> Prometheus:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}",
                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={self.data}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        end = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise AssertionError(f"Prometheus did not start on {self.url}: {self.log}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=5).status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> object:
        """``data`` of a GET on ``/api/v1/<path>``; list values repeat the parameter."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown: the TSDB's head is readable afterwards
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _kill_after_first_trial(space_file: Path, storage: Path, report: Path, log: Path) -> set:
    """The user's command in its own session (so it and its local Ray die as one), killed
    without cleanup once Tune's state records one finished trial."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "jobs/sweep.py"), "--space", str(space_file),
             "--storage", str(storage), "--report-dir", str(report)],
            cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: terminated_in_state(storage / NAME), 600, "a finished trial", proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return terminated_in_state(storage / NAME)


def _resume_while_scraping(space_file: Path, storage: Path, report: Path, port: int):
    """``run_sweep(resume=True)`` in a thread; the endpoint is scraped every second."""
    from speakertune.search import sweep
    from speakertune.search.space import load_space

    done: list = []
    lines: list[str] = []  # what the driver printed

    t0 = time.monotonic()

    def log(msg: str) -> None:  # timed: where a slow run spends its minutes
        lines.append(f"{time.monotonic() - t0:6.1f}s {msg}")
        print(lines[-1])

    runner = threading.Thread(target=lambda: done.append(sweep.run_sweep(
        load_space(space_file), storage=str(storage), report_root=report, resume=True,
        det_top=1, log=log)), daemon=True)  # fmt: skip
    runner.start()
    seen: dict[tuple, list[float]] = {}  # (name, trial, backend) -> values over the scrapes
    end = time.monotonic() + 900
    while runner.is_alive() and time.monotonic() < end:
        for name, labels, value in scrape(port):
            if labels.get("sweep") == NAME:
                seen.setdefault((name, labels["trial"], labels.get("backend")), []).append(value)
        time.sleep(1.0)
    runner.join(5)
    assert done, "the resumed sweep did not finish"
    return done[0], seen, lines


def run_e2e(ray, corpus: Path, tmp: Path) -> types.SimpleNamespace:
    """Run the scenario of the module docstring; returns what the tests check."""
    trials = tmp / "test.txt"
    write_test_list(corpus, trials)
    space_file = tmp / f"{NAME}.yaml"
    space_file.write_text(yaml.safe_dump(e2e_space(corpus, trials)))
    storage, report = tmp / "runs", tmp / "report"
    killed = _kill_after_first_trial(space_file, storage, report, tmp / "driver.log")
    exp = storage / NAME
    first_run = exp / "train_runs" / next(iter(killed)) if len(killed) == 1 else None
    before = {p.name: p.stat().st_mtime_ns for p in first_run.rglob("*") if p.is_file()} \
        if first_run else {}
    report_existed = (report / NAME / "leaderboard.csv").exists()
    cached = sorted(p.name for p in (exp / "train_runs" / ".feature_cache").glob("*.pt"))
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    prom = None  # without Debian's prometheus (.ci/run installs it) its test is skipped
    if shutil.which("prometheus"):
        prom = Prometheus(ray_prometheus_config(session, tmp / "prometheus"),
                          tmp / "prometheus" / "data").start()  # fmt: skip
    try:
        start = time.time()
        result, seen, lines = _resume_while_scraping(space_file, storage, report,
                                                     int(node["MetricsExportPort"]))
        end = time.time()
        targets = prom.api("targets")["activeTargets"] if prom else []
    finally:
        if prom:
            prom.stop()
    return types.SimpleNamespace(
        ray=ray, corpus=corpus, trials=trials, exp=exp, out=report / NAME, result=result,
        killed=killed, first_run=first_run, before=before, report_existed=report_existed,
        cached_when_killed=cached,
        seen=seen, log="\n".join(lines), driver_log=(tmp / "driver.log").read_text(),
        prometheus=prom and types.SimpleNamespace(
            data=prom.data, log=prom.log, window=(start, end), targets=targets,
            scrape_s=PROMETHEUS_SCRAPE_S),  # fmt: skip
    )
