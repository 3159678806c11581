"""Every space in search_spaces/ trains through the real ``jobs/sweep.py``: a CPU-sized copy
(``shipped_spaces.cpu_sized``: same model families, losses, poolings, front end, augmentation
with the built-in banks, backends and cover; smaller sizes and resources) must finish one trial
per covered value with a dev EER. ecapa_losses also runs on a corpus prepared by
``jobs/prepare.py voxceleb`` from plain files, where the built-in banks are not the corpus's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from shipped_spaces import REPO, SPACES, cpu_sized, load, run_sweep_job

pytestmark = pytest.mark.slow

SYNTH = {"corpus": "synthetic", "speakers": 8, "utts_per_speaker": 8, "val_speakers": 2,
         "val_trials": 60, "min_seconds": 0.5, "max_seconds": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def corpus8(tmp_path_factory):
    """8 speakers x 8 utterances: enough rows for N x M end-to-end batches."""
    from speakertune.data.synthetic import ensure_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus8") / "synth"
    ensure_synthetic_corpus(root, speakers=8, utts=8, seed=0, progress=None)
    return root


@pytest.fixture(scope="module")
def prepared(corpus8, tmp_path_factory):
    """The same audio as a VoxCeleb-layout folder (speaker/session/utt.flac), prepared with
    the user's command: a manifest corpus, so the built-in banks are built apart from it."""
    from speakertune.data.manifest import read_manifest

    top = tmp_path_factory.mktemp("vox")
    df = read_manifest(corpus8 / "manifest.parquet")
    for r in df.itertuples():
        dest = top / "wav" / r.spk / r.session / f"{r.utt}.flac"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus8 / r.uri, dest)
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "voxceleb",
                          str(top / "wav"), "--out", str(top / "prepared")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return top / "prepared" / "manifest.parquet"


def _run(name: str, data: dict, tmp_path, **kw) -> tuple[pd.DataFrame, dict]:
    space = cpu_sized(load(name), data, **kw)
    path = tmp_path / f"{name}_cpu.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = run_sweep_job(path, tmp_path)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    board = pd.read_csv(tmp_path / "runs" / space["name"] / "leaderboard.csv")
    return board, space


def _covered(board: pd.DataFrame, space: dict) -> None:
    """One finished trial with a dev EER for each value of every covered parameter."""
    done = board[board["val_eer"].notna()]
    assert len(done) and done["val_eer"].between(0, 1).all(), board.to_string()
    sampled = [dict(kv.split("=", 1) for kv in str(p).split(", ")) for p in done["params"]]
    for path in space["search"].get("cover") or []:
        want = {str(v) for v in space["params"][path]["choice"]}
        assert {s.get(path) for s in sampled} == want, (path, board.to_string())


@pytest.mark.parametrize("name", ["ecapa_losses", "architectures", "end_to_end", "pareto",
                                  "contenders", "small_fast"])
def test_shipped_space_trains(name, corpus8, tmp_path) -> None:
    board, space = _run(name, {**SYNTH, "root": str(corpus8)}, tmp_path)
    _covered(board, space)
    assert space["base"].get("augment") is None or (board["status"] == "TERMINATED").all()


def test_make_sweep_runs_the_quick_start(corpus8, tmp_path) -> None:
    """The README's first command, `make sweep`, with the one override it documents
    (``SPACE=``: here quickstart.yaml at CPU-test size, under a name of its own)."""
    space = cpu_sized(load("quickstart"), {**SYNTH, "root": str(corpus8)})
    space["name"] = f"test-make-sweep-{tmp_path.name}"
    path = tmp_path / "quickstart_cpu.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    report = REPO / "runs" / space["name"]
    try:
        out = subprocess.run(["make", "sweep", f"SPACE={path}"], cwd=REPO, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
        assert "PASS  torch" in out.stdout  # `doctor --quick` ran first
        board = pd.read_csv(report / "leaderboard.csv")
        assert board["val_eer"].notna().sum() == 1
    finally:
        shutil.rmtree(report, ignore_errors=True)


def test_ecapa_losses_on_a_prepared_corpus(prepared, tmp_path) -> None:
    data = {"corpus": "manifest", "manifest": str(prepared), "val_speakers": 2,
            "val_trials": 60, "min_seconds": 0.5, "max_seconds": 1.0}  # fmt: skip
    board, space = _run("ecapa_losses", data, tmp_path, samples=1)  # one trial: the data path
    assert board["val_eer"].notna().sum() == 1, board.to_string()


@pytest.mark.parametrize("name", ["contenders", "small_fast"])
def test_check_plans_voxceleb2_on_cluster_yaml(name, tmp_path) -> None:
    """`--check` at the published sizes, on a VoxCeleb2-sized manifest (1,092,009 rows, 5,994
    speakers; no audio is read) and cluster.yaml's autoscaling limits."""
    from speakertune.testing.fake_manifest import VOXCELEB2_DEV, fake_manifest

    manifest = tmp_path / "manifest.parquet"
    fake_manifest(manifest, *VOXCELEB2_DEV)
    out = run_sweep_job(SPACES / f"{name}.yaml", tmp_path, "--data", str(manifest),
                        "--cluster-config", str(REPO / "cluster.yaml"), "--check")
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "ok: space valid" in out.stdout, out.stdout
    split = re.search(r"data: train (\d+) speakers / (\d+) utts, dev (\d+) speakers", out.stdout)
    assert split and int(split[1]) + int(split[3]) == VOXCELEB2_DEV[1], out.stdout
    cluster = [ln for ln in out.stdout.splitlines() if ln.startswith("cluster: ")]
    assert len(cluster) == 1 and "[autoscaling rule]" in cluster[0], out.stdout
    assert "autoscaler max 776 CPU + 64 GPU" in cluster[0]


def test_every_shipped_space_is_tested() -> None:
    tested = {"ecapa_losses", "architectures", "end_to_end", "pareto", "quickstart",
              "contenders", "small_fast"}
    assert {p.stem for p in SPACES.glob("*.yaml")} == tested
