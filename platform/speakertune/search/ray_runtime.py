"""What the sweep driver needs from Ray itself: starting or joining Ray (dashboard on loopback),
reaping the placement groups of stopped trials, and a one-line report per finished trial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from speakertune.redact import redact_config, redact_text

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
