"""The offline GPU bundle's builder (benchmarks/gpu/build_bundle.py) on small local wheels, and
the train path's DET plot without matplotlib (the bundle leaves it out). No network."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
import build_bundle  # noqa: E402


def _wheel(path: Path, name: str, version: str, files: dict[str, bytes],
           requires: list[str] = ()) -> Path:
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    whl = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for n, data in {**files, f"{dist}/METADATA": meta.encode()}.items():
            z.writestr(n, data)
        z.writestr(f"{dist}/RECORD", "stale,sha256=x,1\n")
    return whl


def test_lock_versions_follow_the_target_markers() -> None:
    v = build_bundle.locked_versions(REPO / "requirements.lock")
    # two entries each in the lock, split at Python 3.11: the target is 3.12
    assert v["rpds-py"] == "2026.9.1" and v["filelock"] == "4.3.1"
    assert v["ray"].startswith("2.60.")


def test_strip_jars_drops_the_jars_and_rewrites_record(tmp_path: Path) -> None:
    files = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"J" * 5000,
             "ray/core/lib.so": b"\0" * 300}
    whl = _wheel(tmp_path, "ray", "2.60.0", files)
    before, after = build_bundle.strip_jars(whl)
    assert after < before
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        record = list(csv.reader(io.StringIO(z.read("ray-2.60.0.dist-info/RECORD").decode())))
        assert not any(n.startswith("ray/jars/") for n in names)
        assert sorted(r[0] for r in record) == sorted(names)
        for path, digest, size in record:
            if path.endswith("RECORD"):
                continue
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + want.decode() and int(size) == len(data)


def test_check_bundle_names_missing_and_mismatched_requirements(tmp_path: Path) -> None:
    _wheel(tmp_path, "ray", "2.60.0", {}, ["msgpack<2,>=1", "numpy>=1.20; extra == 'data'",
                                            "grpcio; extra == 'default'"])
    _wheel(tmp_path, "pydantic", "2.14.4", {}, ["pydantic-core==2.50.5"])
    _wheel(tmp_path, "pydantic_core", "2.50.4", {})
    problems = build_bundle.check_bundle(tmp_path)
    # numpy is preinstalled; grpcio belongs to an extra the bundle does not serve
    assert problems == [
        "pydantic-2.14.4-py3-none-any.whl: needs pydantic-core==2.50.5, bundle has 2.50.4",
        "ray-2.60.0-py3-none-any.whl: needs msgpack<2,>=1, not in the bundle",
    ]


def test_det_plot_is_skipped_with_a_line_without_matplotlib(tmp_path, monkeypatch, capsys):
    from speakertune.train.progress import TrialLog

    for mod in ("matplotlib", "matplotlib.image", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if not installed
    labels = np.repeat([0, 1], 10)
    assert TrialLog(tmp_path).log_det({"cosine": (labels + 0.1, labels)}, 2) is None
    assert "det.png skipped: matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "det.png").exists()
