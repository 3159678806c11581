"""What the sweep driver needs from Ray itself: starting or joining Ray (dashboard on loopback),
reaping the placement groups of stopped trials, and a one-line report per finished trial.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ray.tune import Callback

import speakertune
from speakertune.config import get_dotted
from speakertune.data import storage
from speakertune.quiet import VERBOSE_ENV, job_env, silence_ray
from speakertune.redact import redact_config, redact_text
from speakertune.search.cluster import head_node
from speakertune.train.worker import PG_METRIC

log = logging.getLogger(__name__)
LOCAL_DASHBOARD_PORT = 8265
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch for token authentication (on by default)
_JOB_ID = re.compile(r"[0-9a-f]{8}")  # Ray's JobID: 4 bytes, the tail of its groups' ids
_LEDGER_LINE = re.compile(r"[0-9a-f]{16,64}:[0-9a-f]{8}")
DRIVERS_FILE = "drivers.txt"  # beside Tune's state: every driver a sweep ever had, one a line


class RayConnectError(ValueError):
    """The Ray cluster at ``--address`` cannot be joined; the message says why in one line."""


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """A plain TCP connect to a ``HOST:PORT`` address before ``ray.init``: Ray itself keeps
    retrying an address where nothing answers for minutes. ``auto`` and ``ray://`` pass."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(f"--address {address}: expected HOST:PORT (the head's GCS port, "
                              "6379 by default), auto, or ray://HOST:PORT")  # fmt: skip
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RayConnectError(f"nothing answers at --address {address} ({why}): is a Ray head "
                              "running there, with its GCS port reachable from here?") from None


def _join(kwargs: dict[str, Any], address: str) -> Any:
    """``ray.init`` on an existing cluster, its failure as one line with the likely cause."""
    import ray

    probe_address(address)
    try:
        return ray.init(**kwargs)
    except ConnectionError:
        hint = ""
        if not os.environ.get(AUTH_MODE_ENV) and address != "auto":
            hint = ("; Ray clusters use token authentication by default, and Ray sends its token "
                    "only to a cluster it found itself: on the head use --address auto, elsewhere "
                    f"set {AUTH_MODE_ENV}=token (token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise RayConnectError(f"cannot join the Ray cluster at {address}{hint}") from None


def ray_init_kwargs(
    address: str | None, *, dashboard: bool = True, verbose: bool = False
) -> dict[str, Any]:
    """``ray.init`` arguments: connect to ``address`` or start a local Ray whose dashboard
    listens on loopback only (it has no authentication: never expose it on 0.0.0.0).
    ``dashboard=False``: none (a one-off job, or the fallback when it cannot start; still
    bound to loopback, in case Ray starts parts of it anyway). The job's environment carries
    the ``verbose`` choice to every Ray worker process (``speakertune.quiet``) and, on a
    cluster it joins, the driver's own ``speakertune`` package (``py_modules``)."""
    kwargs: dict[str, Any] = {
        "dashboard_host": "127.0.0.1",
        "runtime_env": {"env_vars": job_env(verbose, local=not address)},
    }
    if address:
        kwargs["address"] = address
        # every worker of the job imports the driver's speakertune, not the copy each node
        # installed at `ray up` time (a job submitted from an edited checkout would run both)
        kwargs["runtime_env"]["py_modules"] = [str(Path(speakertune.__file__).parent)]
    elif dashboard:
        kwargs.update(include_dashboard=True, dashboard_port=LOCAL_DASHBOARD_PORT)
    else:
        kwargs["include_dashboard"] = False
    return kwargs


def init_ray(
    address: str | None,
    log: Callable[[str], None] = print,
    *,
    verbose: bool = False,
    dashboard: bool = True,
) -> str | None:
    """Connect to ``address``/``RAY_ADDRESS`` or start a local Ray (with the dashboard unless
    ``dashboard=False``); without ``verbose``, Ray's deprecation warnings and INFO chatter are
    silenced. Every job that runs Ray Train (sweep, train, finetune) starts Ray here. Raises
    ``RayConnectError`` when ``address`` cannot be joined."""
    import ray

    os.environ[VERBOSE_ENV] = "1" if verbose else "0"  # this process's Train runs read it
    silence_ray(verbose)
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = ray_init_kwargs(address, dashboard=dashboard, verbose=verbose)
    if address:
        ctx = _join(kwargs, address)
        url = getattr(ctx, "dashboard_url", None)
        log(
            f"connected to the Ray cluster at {redact_text(address)}"
            + (f"; dashboard http://{url}" if url else "")
        )
        return url
    if not dashboard:
        ray.init(**kwargs)
        return None
    try:
        ctx = ray.init(**kwargs)
    except Exception as exc:  # dashboard extras (ray[default]) missing or port taken
        if ray.is_initialized():
            ray.shutdown()
        log(f"Ray dashboard unavailable ({str(exc).splitlines()[0]}); starting without it")
        ray.init(**ray_init_kwargs(None, dashboard=False, verbose=verbose))
        return None
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}")
    else:
        log("Ray dashboard unavailable (install ray[default] for it); running without it")
    return url


def remove_placement_groups(ids: Iterable[str]) -> int:
    """Remove those of the placement groups ``ids`` (hex) that still hold resources; returns
    how many. Only ever called with ids this sweep's own Train workers reported."""
    import ray
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    table = placement_group_table()
    removed = 0
    for pg_id in ids:
        info = table.get(pg_id)
        if info and info.get("state") != "REMOVED":
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
            removed += 1
    return removed


def driver_identity() -> str:
    """``HEAD_NODE_ID:JOB_ID`` of this driver. Job ids restart at 01000000 with each Ray
    cluster; the head's node id tells one cluster from the next."""
    import ray

    return f"{head_node().get('NodeID', '')}:{ray.get_runtime_context().get_job_id()}"


def record_driver(exp_path: str) -> set[str]:
    """Add this driver to ``<exp_path>/drivers.txt``; returns the job ids of the sweep's
    earlier drivers on this same cluster (a resumed sweep's killed predecessors)."""
    uri = storage.join(exp_path, DRIVERS_FILE)
    lines = ledger_lines(storage.read_text(uri), uri) if storage.exists(uri) else []
    me = driver_identity()
    # the whole ledger rewritten in one atomic write: a crash leaves the old one, never a torn line
    storage.write_text(uri, "".join(f"{ln}\n" for ln in [*lines, me]))
    head = me.partition(":")[0]
    earlier = (ln.partition(":") for ln in lines if ln != me)
    return {job for h, _, job in earlier if h == head}


def ledger_lines(text: str, where: str) -> list[str]:
    """The well-formed ``HEAD_NODE_ID:JOB_ID`` lines of a driver ledger; a blank line is
    dropped, a malformed one (a torn write, a hand edit) dropped with a warning naming it, so
    that no partial id can ever select another job's placement groups."""
    good = []
    for n, line in enumerate(text.splitlines(), 1):
        if _LEDGER_LINE.fullmatch(line.strip()):
            good.append(line.strip())
        elif line.strip():
            log.warning("%s:%d: ignored malformed driver line %r", where, n, line[:80])
    return good


def groups_of_jobs(jobs: set[str]) -> dict[str, dict[str, float]]:
    """``{id hex: resources}`` of the placement groups that jobs ``jobs`` created and that
    still hold resources. A group's id ends with its creator job's id (Ray's ID layout)."""
    from ray.util.placement_group import placement_group_table

    bad = [j for j in jobs if not _JOB_ID.fullmatch(str(j))]
    if bad:  # a blank or partial id would match other jobs' groups
        raise ValueError(f"not Ray job ids (8 hex digits): {sorted(map(str, bad))[:3]}")
    found: dict[str, dict[str, float]] = {}
    for pg_id, info in placement_group_table().items():
        # a blank id would match every group
        if info.get("state") != "REMOVED" and any(pg_id.endswith(job) for job in jobs):
            res: dict[str, float] = {}
            for bundle in info.get("bundles", {}).values():
                for key, value in bundle.items():
                    res[key] = res.get(key, 0.0) + value
            found[pg_id] = res
    return found


class PlacementGroupReaper(Callback):
    """Removes the Train worker placement groups of this sweep's stopped trials.

    Why they outlive a trial: Tune stops a trial by ending its actor; that actor owns the
    Train controller actor, which dies with it (owner fate-sharing) before it can shut its
    worker group down. The group was created by the controller and is not detached, so Ray's
    GCS keeps it until the whole job (this driver) ends. Ray Train's own detached
    ``PlacementGroupCleaner`` only works through the state API, i.e. with a dashboard.

    Ownership: every Train worker reports the id of its own placement group
    (``ray.util.get_current_placement_group``) as ``PG_METRIC``; only those ids are ever
    removed, never a group of another job or of a trial still running.
    """

    def __init__(self, grace_s: float = 5.0) -> None:
        # A short wait after the trial ends lets its controller die first: removing the group
        # under a live controller would make it restart its workers in a new group.
        self.grace_s = grace_s
        self._groups: dict[str, set[str]] = {}  # trial id -> group ids its workers reported
        self._due: dict[str, float] = {}  # group id -> monotonic time it may be removed

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:  # fmt: skip
        pg_id = result.get(PG_METRIC)
        if isinstance(pg_id, str) and pg_id:
            self._groups.setdefault(trial.trial_id, set()).add(pg_id)

    def _trial_ended(self, trial: Any) -> None:
        at = time.monotonic() + self.grace_s
        for pg_id in self._groups.pop(trial.trial_id, set()):
            self._due[pg_id] = at

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trial)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        ready = [pg_id for pg_id, at in self._due.items() if at <= now]
        if ready:
            self._release(ready)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            self._trial_ended(trial)
        # every trial actor is gone by now: no controller left to restart a group
        self._release(list(self._due))

    def _release(self, ids: list[str]) -> None:
        for pg_id in ids:
            self._due.pop(pg_id, None)
        n = remove_placement_groups(ids)
        if n:
            print(f"[sweep] released {n} placement group(s) of stopped trial(s)", flush=True)


class EarlierDriverReaper(Callback):
    """Removes the placement groups that a resumed sweep's earlier, killed drivers left.

    Why they exist: Ray's GCS removes a job's groups when the job ends, but a group whose
    create request reaches it just after (a Train controller was starting workers when the
    driver was killed) is registered anyway and holds its resources for good; the resumed
    trial then waits for them forever. Only groups created by this sweep's own earlier
    drivers on this cluster (``record_driver``) are touched, never another job's.
    """

    def __init__(self, exp_path: str, every_s: float = 30.0) -> None:
        self.exp_path, self.every_s = exp_path, every_s
        self.setup()

    def setup(self, **info: Any) -> None:
        # Tune calls this when each driver starts: a restored Tuner unpickles its callbacks
        self._jobs: set[str] | None = None
        self._next = 0.0  # monotonic time of the next look: the first step

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s  # a late group registers a moment after its job ends
        if self._jobs is None:
            try:
                self._jobs = record_driver(self.exp_path)
            except storage.StorageError as exc:
                print(f"[sweep] earlier drivers unknown: {exc}", flush=True)
                self._jobs = set()
        found = groups_of_jobs(self._jobs) if self._jobs else {}
        if remove_placement_groups(found):
            cpu = sum(r.get("CPU", 0.0) for r in found.values())
            gpu = sum(r.get("GPU", 0.0) for r in found.values())
            print(f"[sweep] released {len(found)} placement group(s) left by this sweep's "
                  f"killed driver ({cpu:g} CPU, {gpu:g} GPU)", flush=True)  # fmt: skip


def _lookup(config: dict[str, Any], path: str) -> Any:
    """``config[path]`` for a flat dotted key (as Tune's searchers pass them), else nested."""
    return config[path] if path in config else get_dotted(config, path)


class TrialNamer:
    """Tune's ``trial_name_creator``/``trial_dirname_creator``: ``t003-ecapa_tdnn-aam_softmax``
    (trial number, model, loss) instead of ``_trial_fn_77e9b8e2``. Names missing from a trial's
    sampled config come from the base config. Directory names add the trial id: numbers
    restart after a resume, ids never repeat."""

    def __init__(self, base: dict[str, Any], dirname: bool = False) -> None:
        self.defaults = {k: _lookup(base, k) for k in ("model.name", "loss.name")}
        self.dirname = dirname

    def __call__(self, trial: Any) -> str:
        tag = str(getattr(trial, "experiment_tag", "") or "")
        number = tag.split("_", 1)[0]
        parts = [f"t{int(number):03d}" if number.isdigit() else f"t-{trial.trial_id}"]
        for key, default in self.defaults.items():
            value = _lookup(dict(trial.config or {}), key) or default
            if value:
                parts.append(str(value))
        name = "-".join(parts)
        return f"{name}_{trial.trial_id}" if self.dirname else name


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
            f"[sweep] trial {trial} ({trial.trial_id}) {how} after epoch {epoch}: "
            f"{self.metric} {shown} ({r.get('time_total_s', 0):.0f} s) {params}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] trial {trial} ({trial.trial_id}) FAILED (see {trial.error_file})",
              flush=True)  # fmt: skip


def on_every_node(fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``fn(*args)`` once on every live node of the connected cluster (a zero-CPU task pinned
    to each); a node that fails or leaves meanwhile is logged and left out. Nothing without Ray.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        return []
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], False)
                         ).remote(*args) for n in ray.nodes() if n.get("Alive")]  # fmt: skip
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=120))
        except Exception as exc:  # noqa: BLE001 - a lost node: the others still count
            log.warning("%s on a node failed: %s", getattr(fn, "__name__", fn), exc)
    return out
