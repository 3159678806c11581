"""The sweep: Ray Tune ``Tuner`` + ``OptunaSearch`` (TPE, define-by-run) + ASHA over trials that
are each one Ray Train run.

Layout of a sweep ``NAME`` under the storage path (``runs/`` or ``s3://...``)::

    NAME/                 Ray Tune experiment (state, one dir per Tune trial) - for --resume
    NAME/train_runs/ID/   the Ray Train run of trial ID: checkpoints, tensorboard/, progress.log
    NAME/train_runs/.feature_cache/   validation features the trials share (local storage;
                          removed when the sweep ends)

and the report under ``runs/NAME/`` (always local): ``leaderboard.md``, ``leaderboard.csv``,
``importances.md``, ``det_top.png``, ``best/`` (checkpoint with its PLDA backend).

Each Tune trial only drives its Train run (the Train controller takes no CPU), so it reserves
memory but no CPU, on the head node (``trial_placement``): the trial's CPUs/GPUs are held by
its Train workers and Ray Data tasks, and ``max_concurrent_trials`` is sized from
``trainer.trial_resources`` by ``search.cluster``: against the autoscaler's maximum on an
autoscaling cluster, the resources present on a fixed one, and the head's memory on both.

Ray start-up and the Tune callbacks are in ``search.ray_runtime``, the report in
``search.report``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speakertune.config import trial_config
from speakertune.data.paths import absolute_paths
from speakertune.data.storage import has_scheme, join
from speakertune.scoring.feature_cache import clear_cache, sweep_cache_dir
from speakertune.search.cluster import (
    HEAD_NODE_RESOURCE,
    HEAD_NODE_SHARE,
    TRIAL_HEAD_MEMORY,
    ClusterError,
    alive_nodes,
    autoscaling_env,
    check_local_data,
    check_storage,
    cluster_concurrency,
    find_autoscaler_config,
)
from speakertune.search.failures import AllFailedStop, run_with_retry, tune_stopping
from speakertune.search.finetune import finetune_top
from speakertune.search.objectives import searcher_target
from speakertune.search.ray_runtime import (
    EarlierDriverReaper,
    FinishedTrialLine,
    PlacementGroupReaper,
    RayConnectError,
    TrialNamer,
    init_ray,
    on_every_node,
)
from speakertune.search.report import SweepResult, records_from_results, write_report
from speakertune.search.space import SearchSpace
from speakertune.search.suggest import SpaceSampler, cover_points
from speakertune.train.driver import trial_resources
from speakertune.train.metrics import metric_tags

TrainerFactory = Callable[..., Any]  # make_trainer(cfg, *, storage_path, name, callbacks, ...)


class SweepError(RuntimeError):
    """The sweep cannot start or resume; the message says why in one line."""


def trial_placement(memory: float) -> Any:
    """The Tune trial's own reservation: ``memory`` bytes for what it keeps on the head
    (``search.cluster.TRIAL_HEAD_MEMORY``), no CPU, on the head node.

    Its Train workers get their own placement group from the Train controller and the Ray
    Data work runs outside the trial's group (Train schedules it explicitly), so reserving
    the trial's CPUs here as well would hold them twice and deadlock a small machine.

    The trial actor hosts its Train controller (Ray Train attaches the controller to the
    node of the process that calls ``fit``), so it sits on the head, the one node that never
    goes away: a lost worker node then only fails the Train worker group on it, which the
    controller restarts from the last checkpoint elsewhere (``FailureConfig``). A trial actor
    on a worker node would die with it, controller and all.
    """
    from ray import tune

    return tune.PlacementGroupFactory(
        [{"memory": int(memory), HEAD_NODE_RESOURCE: HEAD_NODE_SHARE}]
    )


def _trial_fn(config: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """One Tune trial: build the trial config, run its Train run, forward its reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # the driver's working directory: trial actors run in their own (``data.paths``)
    cfg = absolute_paths(trial_config(spec["base"], dict(config), spec["components"]),
                         spec["cwd"])  # fmt: skip
    factory = spec["factory"]
    if factory is None:
        from speakertune.train.driver import make_trainer as factory
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    if spec.get("autoscaling"):
        autoscaling_env()  # Train waits for the nodes the autoscaler is adding
    # A fixed Train run name per trial: a retried or resumed trial continues its own Train run
    # from that run's latest checkpoint instead of starting over.
    run_with_retry(lambda: factory(
        cfg,
        storage_path=spec["train_root"],
        name=trial_id,
        callbacks=[TuneReportCallback()],
        max_failures=spec["max_failures"],
        metric_tags=metric_tags(ctx.get_experiment_name(), ctx.get_trial_name()),
        feature_cache=spec["feature_cache"],
    ).fit(), stopping=tune_stopping)


def _experiment_name(space: SearchSpace, storage: str, name: str | None, resume: bool) -> str:
    """``name`` (default: the space's); a fresh sweep never overwrites an existing one."""
    from ray import tune

    name = name or space.name
    path = join(storage, name)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise SweepError(f"{path}: no sweep to resume (no Ray Tune experiment state there)")
        return name
    if tune.Tuner.can_restore(path):
        new = f"{name}_{time.strftime('%Y%m%d_%H%M%S')}"
        print(f"{path} already holds a sweep (resume it with --resume); this one is {new!r}")
        return new
    return name


# ---------------------------------------------------------------------------- run_sweep steps


def _base_configs(space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full base config (defaults included) with absolute data paths - trial actors run in
    their own working directories - and the same with the base components' options applied."""
    base = absolute_paths(trial_config(space.base, {}))
    return base, trial_config(base, {}, space.components)


def _prepare_corpus(base_cfg: dict[str, Any], log: Callable[[str], None]) -> None:
    """Build the synthetic corpus once on the driver, so trials only read the cache."""
    if base_cfg["data"]["corpus"] != "synthetic":
        return
    from speakertune.data.corpus import load_corpus

    log(f"preparing the synthetic corpus in {base_cfg['data']['root']} (cached after once)")
    t0 = time.perf_counter()
    load_corpus(base_cfg["data"])
    log(f"corpus ready in {time.perf_counter() - t0:.1f} s")


def _plan_cluster(
    space: SearchSpace,
    base_cfg: dict[str, Any],
    storage: str,
    *,
    cluster_config: str | None,
    joined: bool,
    shared_storage: bool,
    log: Callable[[str], None],
) -> tuple[int, bool, float]:
    """Concurrency (autoscaling or fixed rule, ``search.cluster``) and the storage check,
    before anything starts; returns ``(max_concurrent_trials, autoscaling, head memory per
    trial)``."""
    config = find_autoscaler_config(cluster_config, joined)
    try:
        concurrent, autoscaling, memory = cluster_concurrency(
            trial_resources(base_cfg), space.search["max_concurrent"],
            space.search["num_samples"], config, log,
        )  # fmt: skip
        nodes = alive_nodes()
        check_storage(storage, nodes, autoscaling, shared_storage)
        check_local_data(base_cfg, nodes, autoscaling, shared_storage)
    except ClusterError as exc:
        raise SweepError(str(exc)) from None
    return concurrent, autoscaling, memory


def _trainable(
    space: SearchSpace,
    base: dict[str, Any],
    base_cfg: dict[str, Any],
    *,
    train_root: str,
    factory: TrainerFactory | None,
    max_failures: int,
    autoscaling: bool = False,
    head_memory: float = TRIAL_HEAD_MEMORY,
) -> Any:
    """``_trial_fn`` bound to what every trial needs, with the trial's own reservation."""
    from ray import tune

    spec = {
        "base": base,
        "components": space.components,
        "train_root": train_root,
        # validation features shared by the trials (node-local for S3 storage), removed when
        # the sweep ends
        "feature_cache": sweep_cache_dir(train_root),
        "factory": factory,
        "cwd": str(Path.cwd()),
        "max_failures": max_failures,
        "autoscaling": autoscaling,
    }
    return tune.with_resources(
        tune.with_parameters(_trial_fn, spec=spec), trial_placement(head_memory)
    )


def _searcher(space: SearchSpace) -> Any:
    """Optuna's TPE over the space (define-by-run), trying the ``search.cover`` points first."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = space.search
    sampler = optuna.samplers.TPESampler(
        seed=s["seed"], n_startup_trials=max(2, min(10, s["num_samples"] // 3))
    )
    metric, mode = searcher_target(s)
    return OptunaSearch(space=SpaceSampler(space), metric=metric, mode=mode, sampler=sampler,
                        points_to_evaluate=cover_points(space) or None)


def _new_tuner(
    space: SearchSpace,
    trainable: Any,
    *,
    name: str,
    storage: str,
    concurrent: int,
    base_cfg: dict[str, Any],
    verbose: bool = False,
) -> Any:
    """A fresh ``Tuner``: TPE over the space (define-by-run), ASHA on epochs or FIFO."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.search
    searcher = _searcher(space)
    # Several objectives (search.objectives): Optuna's multi-objective TPE gets the metric
    # list, ASHA keeps its one metric and Tune itself has none (Ray's documented pattern).
    several = isinstance(searcher_target(s)[0], list)
    own = {"metric": s["metric"], "mode": s["mode"]} if several else {}
    all_failed = AllFailedStop(min(s["num_samples"], max(3, concurrent)))
    asha = space.scheduler.get("asha")  # {} means FIFO
    # epochs, not Tune iterations: a resumed Train run keeps counting where it was
    scheduler = ASHAScheduler(time_attr="epoch", **own, **asha) if asha else FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=None if own else s["metric"],
            mode=None if own else s["mode"],
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=s["num_samples"],
            max_concurrent_trials=concurrent,
            time_budget_s=s["time_limit_s"],
            # A fresh actor per trial: when it exits, its Train controller goes with it
            # (the controller's worker placement group stays: PlacementGroupReaper).
            reuse_actors=False,
            trial_name_creator=TrialNamer(base_cfg),
            trial_dirname_creator=TrialNamer(base_cfg, dirname=True),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            # retries are Train's and the trial function's (search.failures), never Tune's
            failure_config=tune.FailureConfig(max_failures=0),
            stop=all_failed,
            callbacks=[
                all_failed,
                FinishedTrialLine(s["metric"], asha and asha["max_t"]),
                PlacementGroupReaper(),
                EarlierDriverReaper(join(storage, name)),
            ],
            verbose=2 if verbose else 1,
        ),
    )


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
    verbose: bool = False,
    cluster_config: str | None = None,
    shared_storage: bool = False,
) -> SweepResult:
    """Run (or resume) the sweep ``space`` and write its report; see the module docstring."""
    from ray import tune

    if not has_scheme(storage):
        storage = str(Path(storage).resolve())
    base, base_cfg = _base_configs(space)
    try:
        init_ray(address, log, verbose=verbose)
    except RayConnectError as exc:
        raise SweepError(str(exc)) from None
    concurrent, autoscaling, head_memory = _plan_cluster(
        space, base_cfg, storage, cluster_config=cluster_config,
        joined=bool(address or os.environ.get("RAY_ADDRESS")), shared_storage=shared_storage,
        log=log,
    )  # fmt: skip
    name = _experiment_name(space, storage, name, resume)
    exp_path = join(storage, name)
    report_dir = Path(report_root).expanduser().resolve() / name
    report_dir.mkdir(parents=True, exist_ok=True)
    _prepare_corpus(base_cfg, log)
    train_root = join(exp_path, "train_runs")
    trainable = _trainable(space, base, base_cfg, train_root=train_root, factory=trainer_factory,
                           max_failures=max_failures, autoscaling=autoscaling,
                           head_memory=head_memory)  # fmt: skip
    if resume:
        log(f"resuming {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        tuner = _new_tuner(space, trainable, name=name, storage=storage, concurrent=concurrent,
                           base_cfg=base_cfg, verbose=verbose)  # fmt: skip
    log(f"sweep {name!r}: {space.search['num_samples']} trials, results in {exp_path}")
    results = tuner.fit()
    result = write_report(records_from_results(results, space, base, train_root), space,
                          name=name, exp_path=exp_path, report_dir=report_dir, det_top_n=det_top,
                          log=log)  # fmt: skip
    _after_report(space, result, exp_path, report_dir, log)
    return result


def _after_report(space: SearchSpace, result: SweepResult, exp_path: str, report_dir: Path,
                  log: Callable[[str], None]) -> None:  # fmt: skip
    """Once the report is written: fine-tune the top trials (``space.finetune``), remove the
    trials' shared feature cache, and say where TensorBoard reads the runs."""
    train_root = join(exp_path, "train_runs")
    if space.finetune and space.finetune["top_k"]:
        result.files.update(finetune_top(result.leaderboard, space.finetune,
                                         report_dir=report_dir, storage_path=exp_path, log=log))
    cache = sweep_cache_dir(train_root)
    freed = sum(on_every_node(clear_cache, cache)) if has_scheme(train_root) else clear_cache(cache)
    if freed:
        log(f"validation feature cache removed ({freed / 2**20:.1f} MB)")
    fast = " --load_fast=false" if has_scheme(train_root) else ""  # its fast loader skips S3
    log(f"TensorBoard: tensorboard{fast} --logdir {train_root}")
