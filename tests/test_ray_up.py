"""``ray up cluster.yaml`` to a finished sweep, as a user runs it, with the real Ray CLI.

A twin of ``cluster.yaml`` keeps every line a user depends on (``file_mounts``,
``rsync_exclude``, setup and start commands, token authentication) and changes only the
provider (Ray's ``local`` provider), the node types (the one head it implies) and the SSH target:
a real sshd (Debian's openssh-server) on 127.0.0.1 and a throwaway user with a home of its own,
so every command crosses SSH and rsync as on AWS. Then, as ``docs/cluster.md`` says: the
corpus published to S3 (SeaweedFS), ``ray job submit`` of ``jobs/sweep.py`` with ``--data``
and ``--storage s3://``, the report fetched with ``ray rsync-down``, ``ray down``.

What this cannot show: AWS itself (instances, IAM, security groups), GPUs and NCCL across
nodes. Runs as root (it adds a user and starts sshd on port 22), in its own pytest process
with no other Ray on the machine.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_sweep import tiny_space
from test_cluster import _header_commands as header_commands

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SSHD = Path("/usr/sbin/sshd")
BUCKET = "rayup"
# what the twin changes; every other key of cluster.yaml is kept as it is
CHANGED = ("provider", "auth", "available_node_types", "head_node_type", "max_workers")
# this machine's way to the package registries (CA bundle, proxy, index), which a login over
# SSH does not inherit; an AWS node reaches PyPI directly
NETWORK_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
               "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS",
               "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_NATIVE_TLS", "HTTP_PROXY", "HTTPS_PROXY",
               "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def twin_config(user: str, key: Path) -> dict:
    """cluster.yaml with Ray's local provider on 127.0.0.1 over SSH as ``user``."""
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for k in CHANGED:
        cfg.pop(k, None)
    cfg["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    cfg["auth"] = {"ssh_user": user, "ssh_private_key": str(key)}
    cfg["max_workers"] = 0
    return cfg


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run(cmd: list[str] | str, env: dict, cwd: Path, timeout: float, check: bool = True
         ) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         shell=isinstance(cmd, str))
    if check and run.returncode != 0:
        shown = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
        pytest.fail(f"{shown} exited {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run


class Node:
    """A throwaway user with its own home, reachable by key over a real sshd on 127.0.0.1:22."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.user = "stnode" + secrets.token_hex(3)
        self.key = workdir / "id_ed25519"
        self.sshd: subprocess.Popen | None = None

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.user).pw_dir)

    def start(self, node_env: dict[str, str]) -> Node:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", self.user], check=True)
        subprocess.run(["usermod", "-p", "*", self.user], check=True)  # no password, not locked
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        ssh = self.home / ".ssh"
        ssh.mkdir(mode=0o700)
        (self.home / "tmp").mkdir()
        shutil.copy(f"{self.key}.pub", ssh / "authorized_keys")
        self._warm_uv_cache()
        # the node's own environment, as an instance profile and a fresh /tmp would give it
        lines = [f"export {k}={v}" for k, v in node_env.items()]  # values without spaces
        bashrc = self.home / ".bashrc"
        bashrc.write_text("\n".join(lines) + "\n" + bashrc.read_text())
        subprocess.run(["chown", "-R", f"{self.user}:{self.user}", str(self.home)], check=True)
        self._start_sshd()
        return self

    def _warm_uv_cache(self) -> None:
        """The node's uv cache holds the lock's wheels (hard links to this machine's cache),
        as a machine image would: `make venv` then installs without GBs of downloads."""
        cache = subprocess.run([str(REPO / ".venv" / "bin" / "uv"), "cache", "dir"],
                               capture_output=True, text=True).stdout.strip()
        if cache and Path(cache).is_dir():
            (self.home / ".cache").mkdir()
            subprocess.run(["cp", "-al", cache, str(self.home / ".cache" / "uv")], check=True)

    def _start_sshd(self) -> None:
        hostkey = self.workdir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)],
                       check=True)
        conf = self.workdir / "sshd_config"
        conf.write_text("\n".join([
            "Port 22", "ListenAddress 127.0.0.1", f"HostKey {hostkey}",
            f"PidFile {self.workdir / 'sshd.pid'}", f"AllowUsers {self.user}",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "MaxStartups 100",
            "MaxSessions 100", "X11Forwarding no", "AllowTcpForwarding yes", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.sshd = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(conf)],
                                     stdout=open(self.workdir / "sshd.log", "w"),
                                     stderr=subprocess.STDOUT)
        for _ in range(50):
            if not _port_free(22):
                return
            time.sleep(0.1)
        log = (self.workdir / "sshd.log").read_text()
        pytest.fail(f"sshd did not listen on 127.0.0.1:22: {log}")

    def stop(self) -> None:
        subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)
        if self.sshd is not None:
            self.sshd.terminate()
            self.sshd.wait(timeout=30)
        time.sleep(0.5)
        subprocess.run(["userdel", "-r", "-f", self.user], capture_output=True)


@pytest.fixture
def node(tmp_path, s3_server):
    if os.geteuid() != 0:
        pytest.skip("adds a user and starts sshd on 127.0.0.1:22: run as root (CI does)")
    if not SSHD.exists():
        pytest.fail("no /usr/sbin/sshd: apt-get install openssh-server (.ci/run does)")
    if not _port_free(22):
        pytest.fail("127.0.0.1:22 is taken; this test starts its own sshd there")
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": s3_server.region,
           "RAY_TMPDIR": "$HOME/tmp",  # this machine's /tmp/ray belongs to root
           **{k: os.environ[k] for k in NETWORK_ENV if k in os.environ}}
    n = Node(tmp_path).start(env)
    try:
        yield n
    finally:
        n.stop()


def copy_checkout(dest: Path) -> Path:
    """The user's checkout: every file git tracks or would track, without .venv or data."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


# Appended to the submitted checkout after `ray up`: a Ray worker process that imports it
# leaves a note, so the test sees which copy of the code the workers ran.
WORKER_NOTE = """
import os as _os, sys as _sys  # noqa: E401
if "default_worker.py" in " ".join(_sys.argv):
    with open(_os.path.expanduser(f"~/worker-import-{_os.getpid()}"), "w") as _f:
        _f.write(__file__)
"""


def test_ray_up_to_a_finished_sweep(node, s3_server, tiny_corpus, tmp_path):
    """cluster.yaml's header, command by command, against the twin (``ray dashboard``'s
    forward would take the port the head's dashboard has on this same machine: skipped)."""
    laptop, checkout = tmp_path / "laptop", copy_checkout(tmp_path / "checkout")
    (laptop / ".ray").mkdir(parents=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "HOME": str(laptop), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": s3_server.region}
    for k in ("RAY_ADDRESS", "VIRTUAL_ENV", "RAY_AUTH_MODE"):
        env.pop(k, None)
    twin = tmp_path / "twin.yaml"
    twin.write_text(yaml.safe_dump(twin_config(node.user, node.key), sort_keys=False))
    home = node.home
    space = tiny_space(tiny_corpus)
    data = space["base"]["data"]  # the published corpus comes in with --data, as documented
    for k in ("corpus", "root", "speakers", "utts_per_speaker"):
        del data[k]
    (home / "tiny.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    s3_server.make_bucket(BUCKET)
    subs = {"cluster.yaml": str(twin), "MY-BUCKET": BUCKET, "/home/ubuntu": str(home),
            "ecapa_losses.yaml": f"{home}/tiny.yaml", "data/synth": str(tiny_corpus),
            "ray up ": "ray up -y --no-config-cache ", "ray down ": "ray down -y "}
    times: dict[str, float] = {}
    ran = []
    for cmd in header_commands():
        if cmd.startswith(("ray dashboard", "python jobs/prepare.py synthetic")):
            continue  # the port is the head's own here; the tiny corpus stands in
        for old, new in subs.items():
            cmd = cmd.replace(old, new)
        if "ray job submit" in cmd:  # the checkout changes after `ray up` (WORKER_NOTE)
            with open(checkout / "platform" / "speakertune" / "__init__.py", "a") as f:
                f.write(WORKER_NOTE)
        t0 = time.monotonic()
        run = _run(cmd, env, checkout, 1800, check=False)
        times[cmd.split(" --")[0][:40]] = time.monotonic() - t0
        ran.append((cmd, run))
        if run.returncode != 0:
            break
    if not cmd.startswith("ray down"):
        _run(f"ray down -y {twin}", env, checkout, 300, check=False)
    for cmd, run in ran:
        assert run.returncode == 0, f"{cmd}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert [c.split()[1] for c, _ in ran if c.startswith("ray ")][:2] == ["get-auth-token", "up"]
    job = next(run.stdout for c, run in ran if "ray job submit" in c)
    assert "[fixed rule]" in job and "local provider, fixed nodes" in job
    assert "validation feature cache removed" in job  # node-local with s3:// storage
    # rsync: the package's data/ kept (an unanchored exclude dropped it), .git not copied
    assert (home / "speakertune" / "platform" / "speakertune" / "data").is_dir()
    assert not (home / "speakertune" / ".git").exists()
    assert (home / ".ray" / "auth_token").read_text() == (laptop / ".ray" / "auth_token"
                                                          ).read_text()
    # the workers ran the submitted checkout, not the copy `ray up` installed on the node
    notes = [p.read_text() for p in home.glob("worker-import-*")]
    assert notes and not any(n.startswith(str(home / "speakertune")) for n in notes), notes
    boards = list((checkout / "runs").rglob("leaderboard.csv"))
    fetched = next(run for c, run in ran if "rsync-down" in c)
    assert len(boards) == 1, (job[-3000:], fetched.stdout[-3000:], fetched.stderr[-2000:],
                              list(home.rglob("leaderboard.csv")))
    board = pd.read_csv(boards[0])
    assert board["val_eer"].notna().sum() >= 2, board.to_string()
    print("wall time (s): " + "; ".join(f"{k} {v:.0f}" for k, v in times.items()))
