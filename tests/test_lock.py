"""The locked environment: exact ABI pins, pyproject.toml and requirements.lock agreeing, the
cluster's setup commands installing from the lock, and `speakertune doctor` catching a torchaudio
that does not load against its torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `make lock` and commit requirements.lock"


def parse_lock(text: str) -> dict[str, list[tuple[str, str, set[str]]]]:
    """name -> [(version, marker, via)] from a `uv pip compile --universal` lock."""
    entries: dict[str, list[tuple[str, str, set[str]]]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.*?))?\s*\\?$", line)
        if m:
            current = set()
            name = m.group(1).lower().replace("_", "-")
            entries.setdefault(name, []).append((m.group(2), m.group(3) or "", current))
        elif current is not None and line.lstrip().startswith("#"):
            via = line.strip("# \t")
            current.add(via[4:] if via.startswith("via ") else via)
    return entries


def project_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def lock_problems(pyproject_text: str, lock_text: str) -> list[str]:
    """What disagrees between pyproject.toml and the lock, for this machine's environment."""
    pyproject = tomllib.loads(pyproject_text)
    lock = parse_lock(lock_text)
    env = default_environment()
    problems = []
    reqs = project_requirements(pyproject)
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        pins = [(v, mk) for v, mk, _ in lock.get(name, [])
                if not mk or Requirement(f"x; {mk}").marker.evaluate(env)]
        if not pins:
            problems.append(f"{req}: in pyproject.toml, not in requirements.lock")
        elif not any(req.specifier.contains(v, prereleases=True) for v, _ in pins):
            problems.append(f"{req}: the lock has {name}=={pins[0][0]}")
    direct = {n for n, rows in lock.items() if any("speakertune (pyproject.toml)" in via
                                                   for _, _, via in rows)}
    declared = {r.name.lower().replace("_", "-") for r in reqs}
    problems += [f"{n}: in requirements.lock as a project dependency, not in pyproject.toml"
                 for n in sorted(direct - declared)]
    for build_req in pyproject["build-system"]["requires"]:
        req = Requirement(build_req)
        locked = [v for v, _, _ in lock.get(req.name.lower(), [])]
        if not str(req.specifier).startswith("=="):
            problems.append(f"build-system {req}: pin it exactly (the install builds in the venv)")
        elif not any(req.specifier.contains(v) for v in locked):
            problems.append(f"build-system {req}: the lock has {req.name} {locked}")
    return problems


def test_abi_coupled_packages_are_pinned_exactly() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {Requirement(d).name: str(Requirement(d).specifier) for d in deps}
    assert pins["torch"] == "==2.11.0" and pins["torchaudio"] == "==2.11.0"


def test_pyproject_and_lock_agree() -> None:
    problems = lock_problems((ROOT / "pyproject.toml").read_text(),
                             (ROOT / "requirements.lock").read_text())
    assert not problems, f"pyproject.toml and requirements.lock disagree ({FIX}):\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("edit", [
    ('"optuna>=4"', '"optuna>=99"'),                      # a changed bound
    ('"pyyaml>=6",', '"pyyaml>=6",\n  "rich>=13",'),      # an added dependency
    ('  "scikit-learn>=1.4",\n', ""),                     # a removed one
])
def test_a_pyproject_only_edit_is_caught(edit: tuple[str, str]) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert edit[0] in text
    lock = (ROOT / "requirements.lock").read_text()
    problems = lock_problems(text.replace(edit[0], edit[1]), lock)
    assert len(problems) == 1, problems


def test_every_install_path_uses_the_lock() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in make and "LOCK := requirements.lock" in make
    assert "pip install -e" not in make
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "pip install" not in ci
    lock_header = (ROOT / "requirements.lock").read_text().splitlines()[1]
    assert "--universal --generate-hashes" in lock_header and "--all-extras" in lock_header


def _doctor(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "speakertune", "doctor", "--quick", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_doctor_passes_in_this_environment(tmp_path: Path) -> None:
    out = _doctor(Path(sys.executable), "--data-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {ln.split()[1]: ln.split()[0] for ln in out.stdout.splitlines()}
    assert lines["torch"] == lines["torchaudio"] == lines["python"] == "PASS"
    assert "fbank" in out.stdout


def test_doctor_never_prints_credentials(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-not-a-real-key"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIA0000EXAMPLE", "AWS_SECRET_ACCESS_KEY": secret}
    out = subprocess.run([sys.executable, "-m", "speakertune", "doctor", "--quick"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "AWS_SECRET_ACCESS_KEY" in out.stdout
    assert secret not in out.stdout + out.stderr and "AKIA0000EXAMPLE" not in out.stdout


@pytest.mark.slow
def test_cluster_setup_installs_the_lock_and_doctor_catches_a_bad_torchaudio(tmp_path: Path):
    """cluster.yaml's setup commands on a fresh HOME (the node's ~), then doctor; then the
    torchaudio release that broke fresh installs, which doctor and `make sweep` must refuse."""
    home = tmp_path / "home"
    node = home / "speakertune"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (node / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, node / f)
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    env = {**os.environ, "HOME": str(home),
           "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv")),
           "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip")}
    env.pop("VIRTUAL_ENV", None)
    env["UV_COMPILE"] = ""  # precompiling bytecode is a minute of CPU this test does not check
    for cmd in cfg["setup_commands"]:
        run = subprocess.run(["bash", "-c", cmd], cwd=home, env=env, capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, f"{cmd}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    venv_py = node / ".venv" / "bin" / "python"
    assert "speakertune/.venv/bin" in (home / ".bashrc").read_text()
    ok = _doctor(venv_py, cwd=node)
    assert ok.returncode == 0 and "PASS  torchaudio" in ok.stdout, ok.stdout + ok.stderr

    subprocess.run([str(node / ".venv" / "bin" / "uv"), "pip", "install", "--python", str(venv_py),
                    "--no-deps", "torchaudio==2.11.1"], env=env, check=True, capture_output=True)
    bad = _doctor(venv_py, cwd=node)
    assert bad.returncode == 1
    fail = [ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fail) == 1 and "torchaudio 2.11.1 with torch 2.11.0" in fail[0], bad.stdout
    sweep = subprocess.run(["make", "sweep"], cwd=node, env=env, capture_output=True, text=True,
                           timeout=300)
    assert sweep.returncode != 0 and fail[0] in sweep.stdout
    assert "Traceback" not in sweep.stdout + sweep.stderr
