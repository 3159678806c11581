"""``speakertune doctor``: is this environment fit to run sweeps?

One line per check (PASS / WARN / FAIL); any FAIL gives a non-zero exit status. The checks import
torch, torchaudio and Ray themselves, inside ``try``, so a broken install ends in one line naming
the packages instead of a traceback from a Ray worker.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PYTHON_RANGE = ((3, 10), (3, 13))
LOW_DISK_GB = 20.0
FULL_DISK_GB = 1.0
FIX = "reinstall from the lock: rm -rf .venv && make venv"


@dataclass(frozen=True)
class Check:
    status: str  # PASS | WARN | FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12} {self.detail}"


def declared_pins() -> dict[str, Requirement]:
    """The project's own requirements (from the installed metadata of pyproject.toml)."""
    reqs = [Requirement(r) for r in metadata.requires("speakertune") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _version_check(name: str, pins: dict[str, Requirement]) -> Check | None:
    have = _installed(name)
    req = pins.get(name)
    if have is None:
        return Check("FAIL", name, f"not installed; {FIX}")
    if req is not None and not req.specifier.contains(have.split("+")[0], prereleases=True):
        return Check("FAIL", name, f"{name} {have} installed, the project pins {req}; {FIX}")
    return None


def check_python() -> Check:
    v = sys.version_info[:2]
    ok = PYTHON_RANGE[0] <= v <= PYTHON_RANGE[1]
    lo, hi = (".".join(map(str, x)) for x in PYTHON_RANGE)
    return Check("PASS" if ok else "FAIL", "python",
                 f"{sys.version.split()[0]} ({'supported' if ok else f'need {lo}-{hi}'})")


def check_torch(pins: dict[str, Requirement]) -> Check:
    bad = _version_check("torch", pins)
    if bad:
        return bad
    import torch

    return Check("PASS", "torch", torch.__version__)


def check_torchaudio(pins: dict[str, Requirement]) -> Check:
    """Version against the pin, then the compiled part: import + one Kaldi fbank call."""
    torch_v = _installed("torch") or "missing"
    ta_v = _installed("torchaudio") or "missing"
    pair = f"torchaudio {ta_v} with torch {torch_v}"
    try:
        import torch
        import torchaudio.compliance.kaldi as kaldi

        feats = kaldi.fbank(torch.zeros(1, 4000) + 1e-3, num_mel_bins=23)
    except Exception as exc:  # OSError (undefined symbol) or ImportError: an ABI mismatch
        msg = str(exc).splitlines()[0][:160]
        return Check("FAIL", "torchaudio",
                     f"{pair}: compiled part does not load ({type(exc).__name__}: {msg}); {FIX}")
    bad = _version_check("torchaudio", pins)
    if bad:
        return Check("FAIL", "torchaudio", f"{pair}: {bad.detail}")
    return Check("PASS", "torchaudio", f"{pair}: loads, fbank {tuple(feats.shape)}")


def check_cuda() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("WARN", "cuda", "no CUDA device: trials run on CPU (gloo)")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() \
        else "unavailable"
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
    return Check("PASS", "cuda", f"{len(names)} GPU(s) {', '.join(names)}; CUDA "
                 f"{torch.version.cuda}; NCCL {nccl}; bf16 {bf16}")


def check_ray(pins: dict[str, Requirement], address: str | None) -> Check:
    bad = _version_check("ray", pins)
    if bad:
        return bad
    import ray

    if not address:
        return Check("PASS", "ray", f"{ray.__version__} (no cluster address: sweeps start one)")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
    except Exception as exc:
        return Check("FAIL", "ray", f"{ray.__version__}; cannot join the cluster at {address}: "
                     f"{str(exc).splitlines()[0][:160]}")
    finally:
        ray.shutdown()
    return Check("PASS", "ray", f"{ray.__version__}; cluster {address}: {len(nodes)} node(s), "
                 f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


def check_espeak() -> Check:
    try:
        from speakertune.data.espeak import Espeak

        Espeak.get()
    except Exception as exc:
        return Check("FAIL", "espeak-ng", f"library does not load: {str(exc).splitlines()[0]}")
    return Check("PASS", "espeak-ng", "library loads (built-in synthetic corpus available)")


def check_s3() -> Check:
    """Which S3 settings are present; values are never printed."""
    env = os.environ
    keys = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                        "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                        "AWS_PROFILE") if env.get(k)]
    if env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_SECRET_ACCESS_KEY"):
        return Check("FAIL", "s3", "AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY")
    if not keys:
        return Check("WARN", "s3", "no AWS_* settings: s3:// needs an instance role or credentials")
    return Check("PASS", "s3", "set: " + ", ".join(keys))


def check_disk(label: str, path: str) -> Check:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free / 1e9
    status = "FAIL" if free < FULL_DISK_GB else "WARN" if free < LOW_DISK_GB else "PASS"
    return Check(status, f"disk {label}", f"{free:.1f} GB free under {path}")


def run_checks(quick: bool = False, address: str | None = None,
               data_dir: str = "data", runs_dir: str = "runs") -> Iterator[Check]:
    """Yield checks in order; `quick` skips the ones that start things (a Ray cluster)."""
    pins = declared_pins()
    steps: list[Callable[[], Check]] = [
        check_python,
        lambda: check_torch(pins),
        lambda: check_torchaudio(pins),
    ]
    for step in steps:
        result = step()
        yield result
        if result.status == "FAIL" and step is not check_python:
            return  # the checks below import torch: stop at the first broken package
    yield check_cuda()
    yield check_ray(pins, None if quick else address)
    yield check_espeak()
    yield check_s3()
    yield check_disk("data", data_dir)
    yield check_disk("runs", runs_dir)

