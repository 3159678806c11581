"""The sweep: Ray Tune ``Tuner`` + ``OptunaSearch`` (TPE, define-by-run) + ASHA over trials that
are each one Ray Train run.

Layout of a sweep ``NAME`` under the storage path (``runs/`` or ``s3://...``)::

    NAME/                 Ray Tune experiment (state, one dir per Tune trial) - for --resume
    NAME/train_runs/ID/   the Ray Train run of trial ID: checkpoints, tensorboard/, progress.log

and the report under ``runs/NAME/`` (always local): ``leaderboard.md``, ``leaderboard.csv``,
``importances.md``, ``det_top.png``, ``best/`` (checkpoint with its PLDA backend).

Each Tune trial only drives its Train run (the Train controller takes no CPU), so it reserves
memory but no CPU: the trial's CPUs/GPUs are held by its Train workers and Ray Data tasks, and
``max_concurrent_trials`` is sized from ``trainer.trial_resources`` so those always fit.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from speakertune.redact import redact_config, redact_text
from speakertune.search import leaderboard as lb
from speakertune.search.space import SearchSpace, SpaceSampler, trial_config

TRIAL_DRIVER_MEMORY = 256 * 1024**2  # what a Tune trial reserves for itself (bytes), no CPU
TrainerFactory = Callable[..., Any]  # make_trainer(cfg, *, storage_path, name, callbacks, ...)


class SweepError(RuntimeError):
    """The sweep cannot start or resume; the message says why in one line."""


@dataclass
class SweepResult:
    name: str
    experiment_path: str
    report_dir: Path
    leaderboard: pd.DataFrame
    files: dict[str, Path | None]
    num_errors: int


def _is_uri(path: str) -> bool:
    return "://" in path


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if _is_uri(root) else str(Path(root, *parts))


def absolute_data_paths(cfg: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """Trial actors run in their own working directory: make local data paths absolute."""
    cwd = cwd or Path.cwd()
    data = cfg.setdefault("data", {})
    for key in ("root", "manifest", "trials"):
        v = data.get(key)
        if isinstance(v, str) and v and not _is_uri(v) and not os.path.isabs(v):
            data[key] = str((cwd / v).resolve())
    for key in ("noise_bank", "rir_bank"):
        v = cfg.get("augment", {}).get(key)
        if isinstance(v, str) and v and not _is_uri(v) and not os.path.isabs(v):
            cfg["augment"][key] = str((cwd / v).resolve())
    return cfg


def trial_resources(cfg: dict[str, Any]) -> dict[str, float]:
    try:
        from speakertune.train.driver import trial_resources as from_trainer
    except ImportError:  # same arithmetic as the trainer's contract
        t = cfg["trainer"]
        n = int(t["num_workers"])
        gpu = float(t.get("gpus_per_worker", 1)) if t.get("use_gpu") else 0.0
        return {
            "CPU": n * float(t["cpus_per_worker"]) + float(t.get("data_cpus") or 0),
            "GPU": n * gpu,
        }
    return from_trainer(cfg)


def trial_placement(cfg: dict[str, Any]) -> Any:
    """The Tune trial's own reservation: memory for its driver, no CPU.

    Its Train workers get their own placement group from the Train controller and the Ray
    Data work runs outside the trial's group (Train schedules it explicitly), so reserving
    the trial's CPUs here as well would hold them twice and deadlock a small machine.
    """
    from ray import tune

    return tune.PlacementGroupFactory([{"memory": TRIAL_DRIVER_MEMORY}])


def fit_concurrency(
    need: dict[str, float], cluster: dict[str, float], cap: int | None
) -> tuple[int, str]:
    """How many trials fit the cluster at once (and why), never more than ``cap``."""
    fits = []
    for res in ("CPU", "GPU"):
        if need.get(res, 0) > 0:
            fits.append(math.floor(cluster.get(res, 0.0) / need[res] + 1e-9))
    n = min(fits) if fits else (cap or 1)
    why = (
        f"{n} concurrent trial(s): each needs {need.get('CPU', 0):g} CPU + {need.get('GPU', 0):g} "
        f"GPU, cluster has {cluster.get('CPU', 0):g} CPU + {cluster.get('GPU', 0):g} GPU"
    )
    if n < 1:
        # An autoscaling cluster adds nodes when trials are pending; a fixed one never will.
        n = cap or 1
        why += f"; none fits now - running {n} and waiting for the autoscaler to add nodes"
    if cap is not None and cap < n:
        n = cap
        why += f"; capped by search.max_concurrent={cap}"
    return n, why


def _trial_fn(config: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """One Tune trial: build the trial config, run its Train run, forward its reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(spec["base"], dict(config), spec["components"])
    factory = spec["factory"]
    if factory is None:
        from speakertune.train.driver import make_trainer as factory
    trial_id = tune.get_context().get_trial_id()
    # A fixed Train run name per trial: a retried or resumed trial continues its own Train run
    # from that run's latest checkpoint instead of starting over.
    trainer = factory(
        cfg,
        storage_path=spec["train_root"],
        name=trial_id,
        callbacks=[TuneReportCallback()],
        max_failures=spec["max_failures"],
    )
    trainer.fit()


def reap_orphan_placement_groups() -> int:
    """Remove placement groups whose creating actor is dead; returns how many.

    When ASHA stops a trial, Tune kills the trial actor and with it the Train controller, which
    never gets to remove its workers' placement group. Ray Train's own cleaner needs the state
    API (the dashboard); without it the group would hold its CPUs/GPUs for good and the next
    trial would wait forever, so the sweep driver reaps such groups itself.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table = gcs_pb2.PlacementGroupTableData
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = table.FromString(raw)
        creator = pg.creator_actor_id
        if (
            pg.state != table.REMOVED
            and pg.creator_actor_dead
            and not pg.is_detached
            and creator
            and creator != b"\xff" * len(creator)  # nil id: created by a driver, not an actor
        ):
            pg_id = ray.PlacementGroupID(pg.placement_group_id)
            remove_placement_group(PlacementGroup(pg_id))
            removed += 1
    return removed


class PlacementGroupReaper(Callback):
    """Runs ``reap_orphan_placement_groups`` from the Tune loop every few seconds."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._last = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        n = reap_orphan_placement_groups()
        if n:
            print(f"[sweep] released {n} placement group(s) of stopped trial(s)", flush=True)


class FinishedTrialLine(Callback):
    """One printed line per finished or failed trial (next to Tune's live status table)."""

    def __init__(self, metric: str, max_t: int | None = None) -> None:
        self.metric, self.max_t = metric, max_t

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        v = r.get(self.metric)
        shown = f"{100 * v:.2f}%" if isinstance(v, float) and "eer" in self.metric else v
        params = ", ".join(f"{k}={v}" for k, v in redact_config(dict(trial.config)).items())
        epoch = r.get("epoch", 0)
        how = "stopped early by ASHA" if self.max_t and epoch < self.max_t else "finished"
        print(
            f"[sweep] trial {trial.trial_id} {how} after epoch {epoch}: "
            f"{self.metric} {shown} ({r.get('time_total_s', 0):.0f} s) {params}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] trial {trial.trial_id} FAILED (see {trial.error_file})", flush=True)


LOCAL_DASHBOARD_PORT = 8265


def ray_init_kwargs(address: str | None, *, dashboard: bool = True) -> dict[str, Any]:
    """``ray.init`` arguments: connect to ``address`` or start a local Ray whose dashboard
    listens on loopback only (it has no authentication: never expose it on 0.0.0.0).
    ``dashboard=False`` is the fallback when it cannot start (still bound to loopback, in case
    Ray starts parts of it anyway)."""
    kwargs: dict[str, Any] = {"dashboard_host": "127.0.0.1"}
    if address:
        kwargs["address"] = address
    elif dashboard:
        kwargs.update(include_dashboard=True, dashboard_port=LOCAL_DASHBOARD_PORT)
    else:
        kwargs["include_dashboard"] = False
    return kwargs


def init_ray(address: str | None, log: Callable[[str], None] = print) -> str | None:
    """Connect to ``address``/``RAY_ADDRESS`` or start a local Ray with the dashboard."""
    import ray

    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = ray_init_kwargs(address)
    if address:
        ctx = ray.init(**kwargs)
        url = getattr(ctx, "dashboard_url", None)
        log(
            f"connected to the Ray cluster at {redact_text(address)}"
            + (f"; dashboard http://{url}" if url else "")
        )
        return url
    try:
        ctx = ray.init(**kwargs)
    except Exception as exc:  # dashboard extras (ray[default]) missing or port taken
        if ray.is_initialized():
            ray.shutdown()
        log(f"Ray dashboard unavailable ({str(exc).splitlines()[0]}); starting without it")
        ray.init(**ray_init_kwargs(None, dashboard=False))
        return None
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}")
    else:
        log("Ray dashboard unavailable (install ray[default] for it); running without it")
    return url


def _experiment_name(space: SearchSpace, storage: str, name: str | None, resume: bool) -> str:
    from ray import tune

    name = name or space.name
    path = _join(storage, name)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise SweepError(f"{path}: no sweep to resume (no Ray Tune experiment state there)")
        return name
    if tune.Tuner.can_restore(path):
        new = f"{name}_{time.strftime('%Y%m%d_%H%M%S')}"
        print(f"{path} already holds a sweep (resume it with --resume); this one is {new!r}")
        return new
    return name


def _records(results: Any, space: SearchSpace, base_cfg: dict[str, Any]) -> list[lb.TrialRecord]:
    out = []
    for res in results:
        hist = res.metrics_dataframe
        hist = hist if hist is not None else pd.DataFrame()
        if "epoch" in hist:  # a resumed run may repeat an epoch it had not finished reporting
            hist = hist.drop_duplicates("epoch", keep="last").reset_index(drop=True)
        params = {k: v for k, v in (res.config or {}).items() if k in space.params}
        cfg = trial_config(base_cfg, params, space.components)
        # Records feed every written report (leaderboard, trial.json): no credentials in them.
        params = redact_config(params)
        metrics = res.metrics or {}
        # A trial that never reported has no metrics: its id is in its directory's name.
        m = re.search(r"_trial_fn_([0-9a-f]+)_", Path(str(res.path)).name)
        trial_id = metrics.get("trial_id") or (m.group(1) if m else Path(str(res.path)).name)
        err = None if res.error is None else redact_text(str(res.error).strip().splitlines()[-1])
        out.append(
            lb.TrialRecord(
                trial_id=str(trial_id),
                params=params,
                history=hist,
                status="ERROR" if err else "TERMINATED",
                resources=trial_resources(cfg),
                time_s=float(metrics.get("time_total_s", 0.0) or 0.0),
                error=err,
            )
        )
    return out


def run_sweep(
    space: SearchSpace,
    *,
    storage: str = "runs",
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    report_root: str | Path = "runs",
    trainer_factory: TrainerFactory | None = None,
    max_failures: int = 2,
    det_top: int = 3,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or resume) the sweep ``space`` and write its report; see the module docstring."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    if not _is_uri(storage):
        storage = str(Path(storage).resolve())
    # The full base config (defaults included) with absolute data paths: trial actors run in
    # their own working directories.
    base = absolute_data_paths(trial_config(space.base, {}))
    base_cfg = trial_config(base, {}, space.components)
    init_ray(address, log)
    name = _experiment_name(space, storage, name, resume)
    exp_path = _join(storage, name)
    report_dir = Path(report_root).resolve() / name
    report_dir.mkdir(parents=True, exist_ok=True)

    if base_cfg["data"].get("corpus") == "synthetic":
        from speakertune.data.corpus import load_corpus

        log(f"preparing the synthetic corpus in {base_cfg['data']['root']} (cached after once)")
        t0 = time.perf_counter()
        load_corpus(base_cfg["data"])
        log(f"corpus ready in {time.perf_counter() - t0:.1f} s")

    import ray

    need = trial_resources(base_cfg)
    cluster = ray.cluster_resources()
    concurrent, why = fit_concurrency(need, cluster, space.search["max_concurrent"])
    log(why)
    spec = {
        "base": base,
        "components": space.components,
        "train_root": _join(exp_path, "train_runs"),
        "factory": trainer_factory,
        "max_failures": max_failures,
    }
    trainable = tune.with_resources(
        tune.with_parameters(_trial_fn, spec=spec), trial_placement(base_cfg)
    )
    s = space.search
    if resume:
        log(f"resuming {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        import optuna

        sampler = optuna.samplers.TPESampler(
            seed=s["seed"], n_startup_trials=max(2, min(10, s["num_samples"] // 3))
        )
        searcher = OptunaSearch(
            space=SpaceSampler(space), metric=s["metric"], mode=s["mode"], sampler=sampler
        )
        asha = space.scheduler.get("asha")
        scheduler = (
            ASHAScheduler(time_attr="epoch", **asha) if asha else FIFOScheduler()
        )  # epochs, not Tune iterations: a resumed Train run keeps counting where it was
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=s["metric"],
                mode=s["mode"],
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=s["num_samples"],
                max_concurrent_trials=concurrent,
                time_budget_s=s["time_limit_s"],
                # A fresh actor per trial: when it exits, its Train controller and that
                # controller's worker placement group go with it (a reused actor leaks them).
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[
                    FinishedTrialLine(s["metric"], asha and asha["max_t"]),
                    PlacementGroupReaper(),
                ],
                verbose=1,
            ),
        )
    log(f"sweep {name!r}: {s['num_samples']} trials, results in {exp_path}")
    results = tuner.fit()
    return write_report(
        _records(results, space, base),
        space,
        name=name,
        exp_path=exp_path,
        report_dir=report_dir,
        det_top_n=det_top,
        log=log,
    )


def write_report(
    records: list[lb.TrialRecord],
    space: SearchSpace,
    *,
    name: str,
    exp_path: str,
    report_dir: Path,
    det_top_n: int = 3,
    log: Callable[[str], None] = print,
) -> SweepResult:
    s = space.search
    max_t = (
        space.scheduler.get("asha", {}).get("max_t") or space.trial_config({})["trainer"]["epochs"]
    )
    df = lb.rank_trials(records, metric=s["metric"], mode=s["mode"], max_t=max_t)
    files: dict[str, Path | None] = dict(
        lb.write_leaderboard(df, report_dir, title=f"Sweep {name}")
    )
    log("\n" + lb.to_markdown(df))
    imp, reason = lb.param_importances(records, space, metric=s["metric"], mode=s["mode"])
    files["importances"] = lb.write_importances(imp, reason, report_dir)
    log("parameter importances: " + (", ".join(f"{k} {v:.2f}" for k, v in imp.items()) or reason))
    files["det"] = (
        lb.det_top(df, report_dir / "det_top.png", top=det_top_n, log=log) if det_top_n else None
    )
    best = df[df["checkpoint"].notna()].head(1)
    files["best"] = lb.export_best(best.iloc[0], report_dir / "best") if len(best) else None
    errors = sum(r.status == "ERROR" for r in records)
    log(f"leaderboard: {files['markdown']}  ({len(records)} trials, {errors} failed)")
    for key in ("csv", "importances", "det", "best"):
        if files.get(key):
            log(f"{key}: {files[key]}")
    log(f"TensorBoard: tensorboard --logdir {_join(exp_path, 'train_runs')}")
    return SweepResult(name, exp_path, report_dir, df, files, errors)
