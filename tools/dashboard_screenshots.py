"""Look at a sweep the way a user does: headless-Chromium screenshots of the Ray dashboard
while a small sweep runs, plus what the node's Prometheus endpoint says about its trials.

    python tools/dashboard_screenshots.py --out docs/img           # quickstart, 2 trials
    python tools/dashboard_screenshots.py --space search_spaces/x.yaml --num-samples 1

Starts its own Ray head (``ray start --head --block``, free ports, dashboard on 127.0.0.1,
metrics exported every second) so that it never touches another Ray on the machine, runs
``jobs/sweep.py --address`` against it, waits until a trial has reported an epoch to Ray's
metrics agent, then saves small PNGs of the dashboard's Jobs list, the sweep's job page,
the Actors page (the trials' Train workers) and the Metrics page. Ray 2.60's open-source
dashboard has no Train page (Ray Train's runs are only served as JSON at
``/api/train/v2/runs``), so that JSON is saved next to the PNGs instead. Needs Debian's
``chromium`` (``apt-get install chromium``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = {"jobs": "#/jobs", "actors": "#/actors", "metrics": "#/metrics"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> str:
    return urllib.request.urlopen(url, timeout=timeout).read().decode()


def wait_for(cond, timeout: float, what: str, every: float = 2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = cond()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


# The private head's own settings, for it and for the sweep that joins it. Token auth off: a
# headless browser cannot log in to the dashboard (Ray 2.59+ turns auth on for local clusters);
# this head listens on 127.0.0.1 only and lives for the few minutes of the run.
HEAD_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# `ray start`, but the head's raylet gets 3 minutes instead of Ray's fixed 30 s to register
# with the GCS (``Node.__init__`` polls ``services.get_node``): on a loaded machine it is late.
# A raylet that died (it aborts when its dashboard agent takes over 15 s to start) fails fast.
PATIENT_RAY_START = """
import sys, time
from ray._private import services
import psutil  # Ray's own copy: importable once ray is
get_node = services.get_node
def raylet_died():
    return any(c.name() == "raylet" and c.status() == psutil.STATUS_ZOMBIE
               for c in psutil.Process().children())
def patient(*args, **kwargs):
    end = time.monotonic() + 180
    while True:
        try:
            return get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > end or raylet_died():
                raise
            time.sleep(1.0)
services.get_node = patient
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def private_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HEAD_ENV)
    return env


def start_head(tmp: Path, cpus: int, attempts: int = 6) -> tuple[subprocess.Popen, dict[str, int]]:
    """A private Ray head in its own process group; every port chosen free. Retried: on a
    loaded machine its raylet can miss Ray's fixed 30 s registration window."""
    for attempt in range(attempts):
        try:
            return _start_head(tmp / f"head{attempt}", cpus)
        except SystemExit as exc:
            if attempt + 1 == attempts:
                raise
            print(f"{exc}; retrying", flush=True)
    raise AssertionError("unreachable")


def _start_head(tmp: Path, cpus: int) -> tuple[subprocess.Popen, dict[str, int]]:
    names = ("port", "dashboard-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "ray-client-server-port",
             "runtime-env-agent-port")  # fmt: skip
    ports = {n: free_port() for n in names}
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", PATIENT_RAY_START, "start", "--head", "--block",
           f"--num-cpus={cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           "--node-ip-address=127.0.0.1", f"--temp-dir={tmp / 'ray'}",
           *[f"--{n}={p}" for n, p in ports.items()]]  # fmt: skip
    env = private_env()
    env.update(RAY_metrics_report_interval_ms="1000")
    # a loaded machine starts the dashboard and its agent slowly: give them time rather than fail
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
    env.setdefault("RAY_agent_register_timeout_ms", "300000")
    env.setdefault("RAY_raylet_start_wait_time_s", "180")  # the raylet's wait for agent ports
    log = open(tmp / "ray_head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    dash = f"http://127.0.0.1:{ports['dashboard-port']}"

    def up() -> str | None:
        if head.poll() is not None:
            raise SystemExit(f"ray start exited ({head.returncode}); see {tmp / 'ray_head.log'}")
        # the dashboard answers before the raylet has registered: wait for both
        started = "Ray runtime started" in (tmp / "ray_head.log").read_text(errors="replace")
        return started and get(f"{dash}/api/version")

    try:
        wait_for(up, 300, "the Ray dashboard")
    except BaseException:
        stop(head)
        raise
    return head, ports


def stop(proc: subprocess.Popen) -> None:
    """End ``proc``'s own process group (it was started in a new session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def screenshot(url: str, png: Path, wait_ms: int = 12000) -> None:
    """One headless-Chromium capture; JavaScript gets ``wait_ms`` of virtual time to load."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--window-size=1400,900",
             f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    shrink(png)


def shrink(png: Path) -> None:
    """A 64-colour palette keeps a dashboard capture around 100 kB."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=64)
    small.save(png, optimize=True)


def our_series(metrics_port: int) -> list[str]:
    text = get(f"http://127.0.0.1:{metrics_port}/metrics")
    return [line for line in text.splitlines() if line.startswith("ray_speakertune_")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default=str(REPO / "search_spaces/quickstart.yaml"))
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the private Ray head offers")
    p.add_argument("--out", default=str(REPO / "docs/img"), help="folder for the PNGs")
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait for an epoch")
    p.add_argument("--finish", action="store_true",
                   help="let the sweep finish, then print its trials' epoch lines")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="st_dash_"))
    head, ports = start_head(tmp, args.cpus)
    dash = f"http://127.0.0.1:{ports['dashboard-port']}"
    print(f"Ray head up; dashboard {dash}, metrics :{ports['metrics-export-port']}", flush=True)
    sweep_log = open(tmp / "sweep.log", "w")
    sweep = subprocess.Popen(
        [sys.executable, str(REPO / "jobs/sweep.py"), "--space", args.space,
         "--num-samples", str(args.num_samples), "--address", f"127.0.0.1:{ports['port']}",
         "--storage", str(tmp / "runs"), "--report-dir", str(tmp / "report")],
        cwd=REPO, stdout=sweep_log, stderr=subprocess.STDOUT, start_new_session=True,
        env=private_env(),
    )  # fmt: skip
    try:
        lines = wait_for(lambda: [s for s in our_series(ports["metrics-export-port"])
                                  if s.startswith("ray_speakertune_epoch{")],
                         args.timeout, "a trial's first epoch on the metrics endpoint")
        print("\n".join(lines), flush=True)
        for name, frag in PAGES.items():
            screenshot(f"{dash}/{frag}", out / f"dashboard_{name}.png")
        jobs = json.loads(get(f"{dash}/api/jobs/"))
        running = [j for j in jobs if j.get("status") == "RUNNING" and j.get("job_id")]
        if running:
            screenshot(f"{dash}/#/jobs/{running[-1]['job_id']}", out / "dashboard_job.png")
        try:  # served only with Ray Train's state tracking (RAY_TRAIN_ENABLE_STATE_TRACKING=1)
            (out / "train_runs.json").write_text(get(f"{dash}/api/train/v2/runs") + "\n")
        except OSError as exc:
            print(f"no Train run list ({exc})", flush=True)
        print(f"screenshots in {out}; sweep log {tmp / 'sweep.log'}", flush=True)
        if args.finish:
            sweep.wait(args.timeout * 3)
            for log in sorted((tmp / "runs").glob("*/train_runs/*/progress.log")):
                print(f"{log.parent.name}:\n{log.read_text()}", flush=True)
    finally:
        stop(sweep)
        stop(head)
        sweep_log.close()


if __name__ == "__main__":
    main()
