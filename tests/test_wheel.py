"""The installed wheel: the commands run without the checkout (no jobs/ directory, no runpy),
the search spaces ship inside it, the console script works, and the jobs/*.py shims still run
from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a checkout holds beyond its sources (.gitignore): not part of a build
NOT_SOURCES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")
ROOT_ONLY = ("build", "data", "runs")  # only at the top: speakertune/data is a package


def _not_sources(folder: str, names: list[str]) -> set[str]:
    skip = shutil.ignore_patterns(*NOT_SOURCES)(folder, names)
    return skip | ({n for n in names if n in ROOT_ONLY} if Path(folder) == ROOT else set())


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_wheel_runs_commands_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_not_sources)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", dist, src], tmp_path, env)
    wheel = next(dist.glob("speakertune-*.whl"))

    # A fresh venv with the wheel installed, then given this environment's dependencies through
    # a plain path line in a .pth (which does not process that directory's own .pth files, so
    # this environment's editable install of speakertune stays invisible).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel],
         tmp_path, env)
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path, env).strip())
    shared = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_shared_deps.pth").write_text("\n".join(sorted(shared)) + "\n")
    assert (site / "speakertune" / "search_spaces" / "quickstart.yaml").is_file()

    work = tmp_path / "elsewhere"  # a working directory with no search_spaces/ or jobs/
    work.mkdir()
    where = _run([py, "-c", "import speakertune, torch, ray; print(speakertune.__file__)"],
                 work, env)
    assert Path(where.strip()).is_relative_to(site), where

    models = _run([py, "-m", "speakertune", "list", "models"], work, env).split()
    assert "ecapa_tdnn" in models and "tdnn" in models

    usage = _run([venv / "bin" / "speakertune", "--help"], work, env)  # [project.scripts]
    assert all(c in usage for c in ("list", "doctor", "sweep", "evaluate", "diarize"))

    plan = _run([py, "-m", "speakertune", "sweep", "--space", "quickstart.yaml", "--check"],
                work, env)
    shipped = site / "speakertune" / "search_spaces" / "quickstart.yaml"
    assert plan.splitlines()[0] == f"sweep quickstart: {shipped}", plan
    assert "trials: 4" in plan and "optimizer.lr: loguniform [0.002, 0.005]" in plan
    assert "ok: space valid" in plan

    # The checkout's shim runs the checkout's sources, and finds the checkout's spaces.
    plan = _run([py, ROOT / "jobs" / "sweep.py", "--space", "quickstart.yaml", "--check"],
                work, env)
    assert plan.splitlines()[0] == f"sweep quickstart: {ROOT / 'search_spaces' / 'quickstart.yaml'}"
    assert "ok: space valid" in plan
