"""Build the offline wheel bundle for an air-gapped GPU machine (issue 14, item 6).

The target: Linux x86_64, CPython 3.12, no network, torch 2.11 / torchaudio 2.11.0 / pandas /
pyarrow / numpy / scipy already installed, at most 64 MiB of files per run. The bundle holds
what the Ray Train path of ``jobs/train.py`` imports on top of that, at the versions pinned in
requirements.lock, as cp312 manylinux wheels:

* Ray repacked without ``ray/jars`` (the Java worker's jars, ~31 MB of the 75 MB wheel; Python
  jobs never load them), its RECORD rewritten to match;
* Ray's core requirements and those of its ``data``/``train``/``tune`` extras (not ``default``:
  the dashboard and its agent, which ``jobs/train.py`` does not start);
* speakertune's own light requirements (pyyaml, soundfile, tensorboardX, packaging) and the
  speakertune wheel itself (the Ray Train workers import the package, not the checkout).

Left out on purpose (imported lazily, only off the train path): av (.m4a decoding), matplotlib
(DET/t-SNE plots; a run without it skips ``det.png`` with a printed line), scikit-learn
(t-SNE), optuna (+ sqlalchemy; the sweep's sampler), espeakng-loader and pyroomacoustics (the
synthetic corpus's speech and rooms). ``check_bundle`` proves every wheel's requirements are met
by the bundle plus the preinstalled set, apart from those.

    python benchmarks/gpu/build_bundle.py [--out benchmarks/gpu/bundle]

Then run it there: benchmarks/gpu/README.md.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
LIMIT_MIB = 64
# The target interpreter, for evaluating the lock's and the wheels' environment markers.
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "extra": "",
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]

# What the GPU machine has (and what its torch/pandas wheels require, so it has those too).
PREINSTALLED = {
    "torch", "torchaudio", "pandas", "pyarrow", "numpy", "scipy",
    # torch's requirements
    "filelock", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
    "fsspec", "setuptools", "triton",
    # pandas's requirements
    "python-dateutil", "pytz", "tzdata", "six",
}
# Wheels to bundle, by lock name: (extras of that package whose requirements must be met).
BUNDLE = {
    "ray": ("data", "train", "tune"),
    # ray core
    "click": (), "jsonschema": (), "jsonschema-specifications": (), "referencing": (),
    "rpds-py": (), "attrs": (), "msgpack": (), "packaging": (), "protobuf": (), "pyyaml": (),
    "requests": (), "certifi": (), "charset-normalizer": (), "idna": (), "urllib3": (),
    # ray[train,tune]
    "tensorboardx": (), "pydantic": (), "pydantic-core": (), "annotated-types": (),
    "typing-inspection": (), "typing-extensions": (),
    # speakertune
    "soundfile": (), "cffi": (), "pycparser": (),
}
# speakertune requirements deliberately absent (lazy imports, off the train path; see above).
OMITTED = {"av", "matplotlib", "scikit-learn", "optuna", "espeakng-loader", "pyroomacoustics"}


def locked_versions(lock: Path) -> dict[str, str]:
    """``name -> version`` from requirements.lock, the entry whose marker fits the target."""
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)\s*(?:;\s*(.*?))?\s*\\?$", line)
        if not m:
            continue
        name, version, marker = canonicalize_name(m[1]), m[2], m[3]
        if marker and not Marker(marker).evaluate(TARGET_ENV):
            continue
        out[name] = version
    return out


def download(names: list[str], versions: dict[str, str], out: Path) -> None:
    """cp312 manylinux (or pure-Python) wheels of ``names`` at their locked versions."""
    pins = [f"{n}=={versions[n]}" for n in names]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
           "--abi", "abi3", "--abi", "none", "--dest", str(out), "--quiet"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + pins, check=True)


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def strip_jars(wheel: Path) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without ``ray/jars/``; RECORD lists exactly what is left.
    Returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in zin.infolist():
            if info.filename.startswith("ray/jars/") or info.filename == record_name:
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            rows.append(_record_line(info.filename, data))
        rows.append([record_name, "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zout.writestr(record_name, buf.getvalue())
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def build_speakertune(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(out), str(REPO)], check=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    return [Requirement(r) for r in msg.get_all("Requires-Dist") or []]


def check_bundle(out: Path) -> list[str]:
    """Every bundled wheel's requirements (with the extras we rely on), evaluated for the
    target, must name a bundled or preinstalled package whose bundled version fits; returns
    the problems (empty: fine)."""
    wheels = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in out.glob("*.whl")}
    versions = {n: parse_wheel_filename(w.name)[1] for n, w in wheels.items()}
    problems = []
    for name, wheel in sorted(wheels.items()):
        extras = BUNDLE.get(name, ())
        for req in wheel_requirements(wheel):
            envs = [{**TARGET_ENV, "extra": e} for e in ("", *extras)]
            if req.marker and not any(req.marker.evaluate(env) for env in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep in PREINSTALLED or (name == "speakertune" and dep in OMITTED):
                continue
            if dep not in versions:
                problems.append(f"{wheel.name}: needs {req}, not in the bundle")
            elif not req.specifier.contains(versions[dep], prereleases=True):
                problems.append(f"{wheel.name}: needs {req}, bundle has {versions[dep]}")
    return problems


def pip_accepts(out: Path) -> None:
    """``pip install --dry-run`` of every wheel for the target interpreter and platform, from
    the bundle only: a wheel with a tag the target cannot install fails here, not there."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
           "--no-deps", "--only-binary", ":all:", "--python-version", "3.12",
           "--implementation", "cp", "--target", str(out / ".dry-run")]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + sorted(str(w) for w in out.glob("*.whl")), check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/gpu/bundle")
    args = ap.parse_args(argv)
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    versions = locked_versions(REPO / "requirements.lock")
    download(sorted(BUNDLE), versions, out)
    ray_wheel = next(out.glob("ray-*.whl"))
    before, after = strip_jars(ray_wheel)
    print(f"{ray_wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB without ray/jars")
    build_speakertune(out)
    sizes = sorted(((w.stat().st_size, w.name) for w in out.glob("*.whl")), reverse=True)
    for size, name in sizes:
        print(f"{size / 2**20:7.2f} MiB  {name}")
    total = sum(s for s, _ in sizes) / 2**20
    print(f"bundle: {len(sizes)} wheels, {total:.1f} MiB (limit {LIMIT_MIB} MiB) in {out}")
    pip_accepts(out)
    problems = check_bundle(out)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if total >= LIMIT_MIB:
        print(f"error: bundle is {total:.1f} MiB, over {LIMIT_MIB} MiB", file=sys.stderr)
    return 1 if problems or total >= LIMIT_MIB else 0


if __name__ == "__main__":
    raise SystemExit(main())
