"""The sweep on real Ray: a driver killed mid-sweep and resumed, the report files, ASHA without
leaked resources (checked on the suite's one end-to-end sweep, ``e2e_sweep``), plus the pieces
that need no sweep: space errors before Ray starts, the placement-group reaper, trial names.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_sweep import tiny_space, wait_for
from speakertune.checkpoint import load_val_scores
from speakertune.search import leaderboard as lb
from speakertune.search import ray_runtime, sweep
from speakertune.search.space import parse_space

REPO = Path(__file__).resolve().parents[1]


_tiny_space, _wait_for = tiny_space, wait_for  # the names other modules import


def _checkpoint_eers(run_dir: Path) -> list[float]:
    return [
        json.loads(p.read_text())["val_eer"]
        for p in sorted(run_dir.glob("checkpoint_*/metrics.json"))
    ]


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_repeating_trials(e2e_sweep) -> None:
    run = e2e_sweep
    assert len(run.killed) == 1, run.driver_log[-3000:]
    (first,) = run.killed
    assert not run.report_existed  # the killed driver wrote no report
    df = pd.read_csv(run.out / "leaderboard.csv")
    assert sorted(df["trial"].astype(str)) == sorted(set(df["trial"].astype(str)))  # no repeats
    assert len(df) == 3 and first in set(df["trial"].astype(str))  # nothing lost
    after = {p.name: p.stat().st_mtime_ns for p in run.first_run.rglob("*") if p.is_file()}
    assert after == run.before, "the finished trial's Train run was touched again"
    for _, row in df.iterrows():
        # the reported EER is the trial's best epoch, as written by the trainer's checkpoints
        eers = _checkpoint_eers(run.exp / "train_runs" / str(row["trial"]))
        assert eers and math.isclose(row["val_eer"], min(eers), rel_tol=1e-9)
        assert 0.0 <= row["val_eer"] <= 1.0 and row["epochs"] >= 1
    assert list(df["val_eer"]) == sorted(df["val_eer"])
    assert (run.out / "leaderboard.md").read_text().count("\n| ") == 4  # header + 3 trials
    assert (run.out / "importances.md").is_file()
    assert (run.out / "det_top.png").read_bytes()[:4] == b"\x89PNG"
    from speakertune.scoring.metrics import eer

    for _, row in df.iterrows():  # the DET plots the trainer's own scores: the same EERs
        for name in ("cosine", "plda"):
            scores, labels = load_val_scores(str(row["checkpoint"]), name)
            assert math.isclose(eer(scores, labels)[0], row[f"val_eer_{name}"], rel_tol=1e-12)
    best = run.result.files["best"]
    assert best and (best / "model.pt").is_file() and (best / "backend_plda.npz").is_file()
    info = json.loads((best / "trial.json").read_text())
    assert info["trial"] == str(df["trial"].iloc[0])
    assert isinstance(info["epochs"], int) and info["epochs"] == int(df["epochs"].iloc[0])
    assert run.result.num_errors == 0


@pytest.mark.slow
def test_trials_share_validation_features_and_the_sweep_removes_them(e2e_sweep) -> None:
    from speakertune.scoring.feature_cache import CACHE_DIR

    run = e2e_sweep
    assert len(run.cached_when_killed) >= 2, run.cached_when_killed  # the val and PLDA tables
    trials = pd.read_csv(run.out / "leaderboard.csv")["trial"].astype(str)
    logs = [(run.exp / "train_runs" / t / "progress.log").read_text() for t in trials]
    assert any("(from the feature cache)" in text for text in logs)  # a later trial read them
    assert not (run.exp / "train_runs" / CACHE_DIR).exists()
    assert "validation feature cache removed" in run.log


def test_invalid_space_fails_before_ray_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"model.name": {"choice": ["ecapa_tdnnn"]}}}))
    # An unreachable RAY_ADDRESS: had the job got as far as Ray, it would fail differently
    # (no timing: speed belongs in benchmarks, and a loaded CI box is slow to import torch).
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    out = subprocess.run(
        [sys.executable, str(REPO / "jobs/sweep.py"), "--space", str(bad)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: params.model.name.choice: unknown model" in lines[0]
    assert "did you mean" in lines[0] or "ecapa_tdnn" in lines[0]
    assert "Ray" not in out.stdout


def test_absolute_paths_keep_builtin_banks_and_uris(tmp_path: Path) -> None:
    from speakertune.data.paths import absolute_paths, local_paths

    cfg = {"data": {"root": "data/synth", "manifest": "s3://b/m.parquet",
                    "test": {"o": "lists/o.txt"}},
           "augment": {"noise_bank": "builtin", "rir_bank": "banks/rirs"},
           "trainer": {"init_checkpoint": None}}  # fmt: skip
    assert [k for k, _ in local_paths(cfg)] == ["data.root", "augment.rir_bank",
                                                "data.test.o.trials"]
    out = absolute_paths(cfg, tmp_path)
    assert out["data"]["root"] == str(tmp_path / "data/synth")
    assert out["data"]["manifest"] == "s3://b/m.parquet"
    assert out["data"]["test"]["o"] == {"trials": str(tmp_path / "lists/o.txt")}
    assert out["augment"] == {"noise_bank": "builtin", "rir_bank": str(tmp_path / "banks/rirs")}
    assert out["trainer"]["init_checkpoint"] is None


def test_errors_that_cannot_heal_are_not_retried() -> None:
    from ray.train import WorkerGroupError
    from speakertune.config import ConfigError
    from speakertune.search.failures import cannot_heal, run_with_retry

    assert cannot_heal(ConfigError("augment.noise_bank: x"))
    assert not cannot_heal(RuntimeError("node lost"))
    assert cannot_heal(WorkerGroupError("w", {0: ConfigError("a"), 1: KeyError("b")}))
    assert not cannot_heal(WorkerGroupError("w", {0: ConfigError("a"), 1: OSError("gone")}))
    calls: list[str] = []

    def flaky() -> str:
        calls.append("x")
        if len(calls) == 1:
            raise RuntimeError("transient")
        return "ok"

    assert run_with_retry(flaky, log=calls.append) == "ok"
    assert calls[1].startswith("trial failed (transient); retry 1 of 1")

    def broken() -> None:
        calls.append("y")
        raise ConfigError("data.root: bad")

    calls.clear()
    with pytest.raises(ConfigError):
        run_with_retry(broken, log=calls.append)
    assert calls == ["y"]  # failed once, no retry

    def stopped() -> None:  # what an ASHA-stopped trial's Train run raises
        calls.append("z")
        raise RuntimeError("worker died: INTENDED_SYSTEM_EXIT (placement group removed)")

    for stopping in (lambda: False, lambda: True):
        calls.clear()
        with pytest.raises(RuntimeError):
            run_with_retry(stopped, log=calls.append, stopping=stopping)
        assert calls == ["z"]  # an intended stop is never run again

    def transient() -> None:
        calls.append("t")
        raise RuntimeError("transient")

    calls.clear()
    with pytest.raises(RuntimeError, match="transient"):  # Tune stopping it: no retry either
        run_with_retry(transient, log=calls.append, stopping=lambda: True)
    assert calls == ["t"]


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_ends_early_without_retries(ray_local,
                                                                  tmp_path: Path) -> None:
    """Every trial raises a configuration error on start-up: each fails once (Tune retries
    nothing), the sweep stops after the first 3 of its 6 trials, the report names the error."""
    calls = tmp_path / "calls.txt"

    def factory(cfg, **kw):
        with open(calls, "a") as f:
            f.write(kw["name"] + "\n")
        from speakertune.config import ConfigError

        raise ConfigError("augment.noise_bank: /nowhere: noise/RIR bank not found")

    space = tiny_space(tmp_path / "corpus", num_samples=6)
    space["search"]["max_concurrent"] = 1
    result = sweep.run_sweep(parse_space(space, source="t.yaml"), storage=str(tmp_path / "runs"),
                             report_root=tmp_path / "report", trainer_factory=factory,
                             log=lambda m: None)  # fmt: skip
    names = calls.read_text().split()
    assert len(names) == 3 and len(set(names)) == 3, names  # 3 trials, one call each
    assert len(result.leaderboard) == 3 and result.num_errors == 3
    assert "ConfigError: augment.noise_bank: /nowhere" in result.first_error


def test_only_our_placement_groups_are_reaped(ray_local) -> None:
    """Groups left behind by dead creators (as by a stopped trial's Train controller) are
    removed only when they are ours: another job's orphan stays."""
    ray = ray_local
    from ray.util.placement_group import placement_group_table, remove_placement_group

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self) -> str:
            pg = ray.util.placement_group([{"CPU": 0.5}])
            ray.get(pg.ready(), timeout=30)
            return pg.id.hex()

    creators = [Creator.remote(), Creator.remote()]
    ours, theirs = ray.get([c.make.remote() for c in creators], timeout=60)
    for c in creators:
        ray.kill(c)  # the creators die without removing their groups, like a stopped trial's
    try:
        time.sleep(1.0)
        assert placement_group_table()[ours]["state"] == "CREATED"
        reaper = ray_runtime.PlacementGroupReaper(grace_s=0.0)
        trial = type("T", (), {"trial_id": "t1"})()
        reaper.on_trial_result(0, [], trial, {ray_runtime.PG_METRIC: ours})
        reaper.on_step_begin(0, [])
        assert placement_group_table()[ours]["state"] == "CREATED"  # trial still running
        reaper.on_trial_complete(0, [], trial)
        reaper.on_step_begin(0, [])
        _wait_for(lambda: placement_group_table()[ours]["state"] == "REMOVED", 10, "removal")
        assert placement_group_table()[theirs]["state"] == "CREATED"  # not ours: kept
        assert ray_runtime.remove_placement_groups([ours]) == 0
    finally:
        remove_placement_group(_handle(ray, theirs))  # the test's own cleanup
    _wait_for(lambda: placement_group_table()[theirs]["state"] == "REMOVED", 10, "cleanup")


_DYING_DRIVER = """
import sys, time, ray
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], log_to_driver=False)
if sys.argv[2] == "detached":  # another job's group that outlives it on purpose
    pg = placement_group([{"CPU": 0.01}], lifetime="detached")
    ray.get(pg.ready(), timeout=30)
else:
    @ray.remote(num_cpus=0)
    class Starter:  # like a Train controller starting its workers when the driver is killed
        def spin(self):
            while True:  # the more requests in flight, the likelier; Ray removes the rest
                placement_group([{"CPU": 0.01}])
                time.sleep(0.003)

    Starter.remote().spin.remote()
    time.sleep(1.0)
print(ray.get_runtime_context().get_job_id(), flush=True)
time.sleep(600)
"""


def _killed_driver(script: Path, address: str, kind: str) -> str:
    """Run ``script`` as a driver of its own, SIGKILL it once it is busy; its job id."""
    child = subprocess.Popen([sys.executable, str(script), address, kind], text=True,
                             stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
    job = child.stdout.readline().strip()
    os.killpg(child.pid, 9)
    child.wait(30)
    return job


def test_groups_a_killed_driver_left_are_released(ray_local, tmp_path: Path, capsys,
                                                   caplog) -> None:
    """A driver killed while its actor creates placement groups: Ray 2.60's GCS removes the
    job's groups, but one whose request lands just after is kept with its resources for good
    (reproduced here; a resumed multi-node sweep waited 13 min for such a group's 2 CPUs).
    The resumed sweep's reaper removes the groups of its own earlier drivers, and no others:
    not a live job's, not another ended job's detached group."""
    ray = ray_local
    from ray.util.placement_group import placement_group_table, remove_placement_group

    script = tmp_path / "dying_driver.py"
    script.write_text(_DYING_DRIVER)
    address = ray.get_runtime_context().gcs_address
    exp = tmp_path / "exp"
    assert ray_runtime.record_driver(str(exp)) == set()  # the sweep's first driver
    head, me = ray_runtime.driver_identity().split(":")
    live = ray.util.placement_group([{"CPU": 0.01}])  # this job's: alive
    other = _killed_driver(script, address, "detached")
    theirs = ray_runtime.groups_of_jobs({other})
    assert len(theirs) == 1
    try:
        for _ in range(20):  # 10 of 12 tries left one on this VM; 20 misses: < 1e-15
            earlier = _killed_driver(script, address, "spin")
            time.sleep(2.0)  # the job's end is handled in ~0.1 s, such a group lands after
            left = ray_runtime.groups_of_jobs({earlier})
            time.sleep(1.0)
            if left and ray_runtime.groups_of_jobs({earlier}) == left:  # kept, not in flight
                break
        assert left, "no group outlived its killed driver in 20 tries"
        assert all(r == {"CPU": 0.01} for r in left.values()), left
        # the sweep resumed: its ledger lists the killed driver, a driver of an older cluster,
        # a blank line and a torn one (#26: "HEAD:0" matched this job's and other jobs' groups)
        older = "f" * len(head)
        (exp / ray_runtime.DRIVERS_FILE).write_text(
            f"{head}:{earlier}\n\n{head}:0\n{older}:{other}\n")
        reaper = ray_runtime.EarlierDriverReaper(str(exp), every_s=60.0)
        reaper.setup()
        reaper.on_step_begin(0, [])
        out = capsys.readouterr()
        assert f"released {len(left)} placement group(s)" in out.out
        assert f"drivers.txt:3: ignored malformed driver line '{head}:0'" in caplog.text
        wait_for(lambda: not ray_runtime.groups_of_jobs({earlier}), 10, "the groups removed")
        assert (exp / ray_runtime.DRIVERS_FILE).read_text().split() == [
            f"{head}:{earlier}", f"{older}:{other}", f"{head}:{me}"]  # fmt: skip
        with pytest.raises(ValueError, match="not Ray job ids"):
            ray_runtime.groups_of_jobs({"0"})
        table = placement_group_table()
        assert table[live.id.hex()]["state"] == "CREATED"
        assert all(table[i]["state"] == "CREATED" for i in theirs)  # not this sweep's
    finally:
        for pg_id in [live.id.hex(), *theirs]:
            remove_placement_group(_handle(ray, pg_id))


def _handle(ray, pg_id: str):
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(ray.PlacementGroupID.from_hex(pg_id))


@pytest.mark.slow
def test_asha_sweep_leaks_no_cpus(e2e_sweep) -> None:
    """ASHA stopped trials mid-run (and Tune stops each trial at ``max_t`` before its Train
    run has shut down); afterwards every CPU is free again (no leaked group)."""
    ray = e2e_sweep.ray
    df = pd.read_csv(e2e_sweep.out / "leaderboard.csv")
    assert len(df) == 3 and e2e_sweep.result.num_errors == 0
    total = ray.cluster_resources()["CPU"]
    wait_for(lambda: ray.available_resources().get("CPU", 0.0) >= total, 60, "all CPUs free")


def test_trial_names_show_number_model_and_loss() -> None:
    base = {"model": {"name": "tdnn"}, "loss": {"name": "softmax"}}
    trial = type("T", (), {"trial_id": "77e9b8e2", "experiment_tag": "3_loss.name=aam",
                           "config": {"model.name": "ecapa_tdnn", "loss.name": "aam_softmax"}})()
    assert ray_runtime.TrialNamer(base)(trial) == "t003-ecapa_tdnn-aam_softmax"
    named = ray_runtime.TrialNamer(base, dirname=True)(trial)
    assert named == "t003-ecapa_tdnn-aam_softmax_77e9b8e2"  # ids keep resumed dirs apart
    trial.config = {"loss": {"name": "arcface"}}  # nested, model from the base config
    assert ray_runtime.TrialNamer(base)(trial) == "t003-tdnn-arcface"


def test_quiet_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from speakertune import quiet
    from speakertune.commands.sweep import build_parser

    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.INFO)
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    quiet.silence_train_worker()
    assert root.level == logging.INFO  # --verbose: Ray's lines stay
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    quiet.silence_train_worker()
    assert root.level == logging.WARNING

    quiet = ray_runtime.ray_init_kwargs(None)["runtime_env"]["env_vars"]
    assert quiet["PYTHONWARNINGS"] == "ignore::DeprecationWarning"
    assert quiet["SPEAKERTUNE_VERBOSE"] == "0"
    assert quiet["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"  # a local Ray: nothing to preempt
    loud = ray_runtime.ray_init_kwargs(None, verbose=True)["runtime_env"]["env_vars"]
    assert loud == {"SPEAKERTUNE_VERBOSE": "1"}
    remote = ray_runtime.ray_init_kwargs("auto")["runtime_env"]["env_vars"]
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in remote  # a cluster may be preempted
    assert build_parser().parse_args(["--space", "x", "--verbose"]).verbose


def _record(
    tid: str, eers: list[float], params: dict, status: str = "TERMINATED"
) -> lb.TrialRecord:
    hist = pd.DataFrame(
        {
            "epoch": range(1, len(eers) + 1),
            "val_eer": eers,
            "val_eer_low": [e - 0.004 for e in eers],
            "val_eer_high": [e + 0.005 for e in eers],
            "val_eer_cosine": eers,
            "val_eer_plda": [e + 0.01 for e in eers],
            "val_min_dcf_cosine": [0.5] * len(eers),
            "val_min_dcf_plda": [0.6] * len(eers),
            "num_params": [1000] * len(eers),
            "checkpoint_path": [f"/ck/{tid}/{i}" for i in range(len(eers))],
        }
    )
    return lb.TrialRecord(tid, params, hist, status, {"CPU": 2.0, "GPU": 1.0}, 1800.0)


def test_rank_trials_and_importances(tmp_path: Path) -> None:
    space = parse_space({"params": {
        "loss.name": {"choice": ["softmax", "aam_softmax"]},
        "loss.margin": {"uniform": [0.0, 0.4], "when": {"loss.name": "aam_softmax"}},
        "optimizer.lr": {"loguniform": [3e-4, 1e-2]}}}, source="t.yaml")  # fmt: skip
    recs = [
        _record("a", [0.30, 0.20, 0.25], {"loss.name": "softmax", "optimizer.lr": 1e-3}),
        _record(
            "b", [0.40], {"loss.name": "aam_softmax", "optimizer.lr": 5e-3, "loss.margin": 0.2}
        ),
        _record("c", [0.35, 0.10], {"loss.name": "aam_softmax", "optimizer.lr": 2e-3}),
        lb.TrialRecord("d", {"loss.name": "softmax"}, pd.DataFrame(), "ERROR", error="boom\nx"),
    ]
    df = lb.rank_trials(recs, metric="val_eer", mode="min", max_t=3)
    assert list(df["trial"]) == ["c", "a", "b", "d"]
    assert list(df["val_eer"][:3]) == [0.10, 0.20, 0.40]
    assert list(df["best_epoch"][:3]) == [2, 2, 1]
    assert list(df["checkpoint"][:3]) == ["/ck/c/1", "/ck/a/1", "/ck/b/0"]
    assert list(df["stopped_early"]) == [True, False, True, False]
    assert math.isclose(df["gpu_h"][0], 0.5) and math.isclose(df["cpu_h"][0], 1.0)
    assert pd.isna(df["rank"][3]) and df["status"][3].startswith("ERROR: boom")
    files = lb.write_leaderboard(df, tmp_path)
    md = files["markdown"].read_text()
    assert "| 1 | c |" in md and "| 10.00% [9.6, 10.5] |" in md and "dev EER [95% CI]" in md
    csv = pd.read_csv(files["csv"])
    assert list(csv["val_eer_low"][:1]) == [pytest.approx(0.096)]
    # a tie: Ray Train's retention deletes the earlier checkpoint first, so the later one wins
    tie = lb.rank_trials([_record("t", [0.3, 0.2, 0.2], {})], metric="val_eer", mode="min")
    assert tie["best_epoch"][0] == 3 and tie["checkpoint"][0] == "/ck/t/2"
    imp, reason = lb.param_importances(recs, space)
    assert not reason and set(imp) == {"loss.name", "optimizer.lr"}  # margin is conditional
    assert math.isclose(sum(imp.values()), 1.0, rel_tol=1e-6)
    imp, reason = lb.param_importances(recs[:1] + recs[3:], space)
    assert imp == {} and "at least 2" in reason
    assert "Not computed" in lb.write_importances(imp, reason, tmp_path).read_text()


def test_export_best_redacts_trial_json(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"  # AWS's documented example secret
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"weights")
    row = pd.Series({"trial": "t1", "val_eer": 0.1, "checkpoint": str(ckpt),
                     "params": f"data.storage.secret_key={secret}, optimizer.lr=0.001",
                     "status": f"ERROR: s3://AKIAEXAMPLE:{secret}@bucket/x failed"})  # fmt: skip
    best = lb.export_best(row, tmp_path / "best")
    text = (best / "trial.json").read_text()
    assert secret not in text and (best / "model.pt").read_bytes() == b"weights"
    info = json.loads(text)
    assert info["trial"] == "t1" and info["val_eer"] == 0.1 and "optimizer.lr=0.001" in text
    assert "secret_key=***" in info["params"]


def test_epochs_tune_never_recorded_come_from_the_checkpoints(tmp_path: Path) -> None:
    """A driver killed after the Train run saved epoch 2 but before Tune recorded it: on
    resume the run has nothing left to report, so epoch 2 is read from its checkpoint."""
    from speakertune.search.report import unreported_epochs

    run = tmp_path / "train_runs" / "1c0600e2"
    for epoch, eer in ((1, 0.5), (2, 0.25)):
        ck = run / f"checkpoint_epoch_{epoch:04d}"
        ck.mkdir(parents=True)
        (ck / "metrics.json").write_text(json.dumps({"epoch": epoch, "val_eer": eer}))
    tune_hist = pd.DataFrame({"epoch": [1], "val_eer": [0.5],
                              "checkpoint_path": [str(run / "checkpoint_epoch_0001")]})
    hist = unreported_epochs(tune_hist, str(run))
    assert list(hist["epoch"]) == [1, 2] and list(hist["val_eer"]) == [0.5, 0.25]
    assert hist["checkpoint_path"][1] == str(run / "checkpoint_epoch_0002")
    assert unreported_epochs(tune_hist, str(tmp_path / "never_saved")).equals(tune_hist)
    best = lb.rank_trials([lb.TrialRecord("1c0600e2", {}, hist, "TERMINATED")],
                          metric="val_eer", mode="min")
    assert best["val_eer"][0] == 0.25 and best["best_epoch"][0] == 2
