"""What a sweep must know about the Ray cluster before it starts: how many trials to run at
once, and whether its ``--storage`` is reachable from every node.

Concurrency has two rules (``plan_concurrency``, a pure function):

* **autoscaling** - the cluster has an autoscaler config (``ray up`` leaves it on the head as
  ``~/ray_bootstrap_config.yaml``; ``--cluster-config`` names another): trials are sized
  against the most the config can ever start (``autoscaler_limits``), not against what is up
  now. Trials that do not fit yet stay pending and their Train placement groups are the
  autoscaler's demand, so it adds nodes for them.
* **fixed** - no autoscaler config: trials are sized against the resources present now.

Only public Ray APIs are used (``ray.cluster_resources``, ``ray.nodes``); the autoscaler config
is the documented cluster-launcher YAML.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from speakertune.data.paths import local_paths

# Where the cluster launcher writes the autoscaler config on the head node (`ray up`).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# How long Ray Train waits for a worker group's placement group before giving it back and
# asking again (seconds; Ray's default is 60): new GPU nodes take minutes to boot, and a
# request that keeps disappearing makes the autoscaler's demand flicker.
AUTOSCALING_WORKER_START_TIMEOUT_S = 900
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Ray's built-in resource of the head node (``ray._common.constants.HEAD_NODE_RESOURCE_NAME``;
# every head has 1 of it): a tiny share pins each trial actor, and so its Train controller,
# to the head. Ray Train itself places its state actor the same way.
HEAD_NODE_RESOURCE = "node:__internal_head__"
HEAD_NODE_SHARE = 0.001
# What one running trial keeps on the head: its trial actor, Train controller, and Ray Data's
# dataset manager and split coordinator (1.8 GB of unique memory, 3.2 GB resident, measured on
# the toy corpus; a VoxCeleb2-size manifest of 1.09M rows adds 0.3-0.5 GB to the trial actor's
# set-up). Reserved as Ray's ``memory`` resource, so the head never admits more trials than it
# can hold.
TRIAL_HEAD_MEMORY = 3 * 1024**3


class ClusterError(RuntimeError):
    """The sweep cannot run on this cluster as asked; the message says why in one line."""


def _fits(need: dict[str, float], have: dict[str, float]) -> int | None:
    """How many trials needing ``need`` fit in ``have`` (None: ``need`` asks for nothing)."""
    fits = [
        math.floor(have.get(res, 0.0) / amount + 1e-9)
        for res, amount in need.items()
        if amount > 0
    ]
    return min(fits) if fits else None


def _show(res: dict[str, float]) -> str:
    return " + ".join(f"{res.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def plan_concurrency(
    need: dict[str, float],
    now: dict[str, float],
    cap: int | None,
    limit: dict[str, float] | None = None,
    num_samples: int | None = None,
    head_memory: float | None = None,
) -> tuple[int, str]:
    """``(max_concurrent_trials, start line)`` for trials that each hold ``need``.

    ``now``: the cluster's resources at start; ``limit``: the most its autoscaler config can
    reach (None on a fixed cluster); ``cap``: the space's ``search.max_concurrent``;
    ``num_samples``: more concurrent trials than trials is pointless; ``head_memory``: the
    head's Ray ``memory`` (bytes), of which each trial holds ``trial_head_memory``. Raises
    ``ClusterError`` when not even one trial can ever fit."""
    autoscaling = limit is not None
    have = limit if autoscaling else now
    fits = _fits(need, have)
    rule = "autoscaling" if autoscaling else "fixed"
    where = f"autoscaler max {_show(have)}" if autoscaling else f"cluster has {_show(have)}"
    if fits is not None and fits < 1:
        hint = ("raise max_workers in the autoscaler config" if autoscaling else
                "add nodes, or pass --cluster-config with the autoscaler config if it scales")
        raise ClusterError(f"a trial needs {_show(need)} but the {where} ({rule} cluster): "
                           f"lower resources.* in the space or {hint}")  # fmt: skip
    bounds = {"cluster": fits if fits is not None else math.inf}
    if cap is not None:
        bounds["search.max_concurrent"] = cap
    if num_samples is not None:
        bounds["num_samples"] = num_samples
    if head_memory is not None:
        bounds["head memory"] = max(1, math.floor(head_memory / TRIAL_HEAD_MEMORY + 1e-9))
    n = min(bounds.values())
    if n == math.inf:
        n = 1  # nothing bounds it: no resources asked for and no cap
    binding = min(bounds, key=lambda k: bounds[k])
    line = (f"{n} concurrent trial(s) [{rule} rule]: each needs {_show(need)}, {where}"
            f" (fits {bounds['cluster']})")  # fmt: skip
    if binding != "cluster" and bounds[binding] < bounds["cluster"]:
        line += f"; capped by {binding}={bounds[binding]}"
        if binding == "head memory":
            line += (f" ({head_memory / 2**30:.1f} GiB, {TRIAL_HEAD_MEMORY / 2**30:g} GiB per "
                     "trial: a head with more memory runs more trials at once)")
    if autoscaling:
        line += f"; up now: {_show(now)}, the autoscaler adds nodes for pending trials"
    return int(n), line


def autoscaler_limits(config: dict[str, Any]) -> dict[str, float]:
    """The most of each resource a cluster-launcher config can ever run: the head plus, per
    resource, the worker nodes richest in it up to each type's and the global ``max_workers``
    (an upper bound: the autoscaler never exceeds it)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total_cap = config.get("max_workers")
    keys = {k for t in types.values() for k in (t.get("resources") or {})}
    out: dict[str, float] = {}
    for key in sorted(keys):
        amount = float((types.get(head, {}).get("resources") or {}).get(key, 0))
        pool = []  # (per-node amount, nodes) of worker types, richest first
        for name, t in types.items():
            per = float((t.get("resources") or {}).get(key, 0))
            count = int(t.get("max_workers", 0)) - (1 if name == head else 0)
            if per > 0 and count > 0:
                pool.append((per, count))
        left = int(total_cap) if total_cap is not None else sum(c for _, c in pool)
        for per, count in sorted(pool, reverse=True):
            take = min(count, left)
            amount += per * take
            left -= take
        out[key] = amount
    return out


def fixed_nodes(config: dict[str, Any]) -> bool:
    """Ray's ``local`` provider with listed ``worker_ips`` (no coordinator): fixed machines,
    nothing to autoscale, and no resources in the config (each node's Ray detects its own)."""
    provider = config.get("provider") or {}
    return provider.get("type") == "local" and "coordinator_address" not in provider


def load_autoscaler_limits(path: str | Path) -> dict[str, float] | None:
    """``autoscaler_limits`` of a config file; None for fixed on-premise nodes (the fixed-cluster
    rule applies); one-line ``ClusterError`` if it is unusable."""
    path = Path(path).expanduser()
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())  # YAML errors span lines: one line here
        raise ClusterError(f"{path}: cannot read the autoscaler config ({why})") from None
    if isinstance(config, dict) and fixed_nodes(config):
        return None
    if not isinstance(config, dict) or not config.get("available_node_types"):
        raise ClusterError(f"{path}: not a Ray autoscaler config (no available_node_types)")
    head = config.get("head_node_type")
    types = config["available_node_types"]
    if not any(t.get("resources") for name, t in types.items() if name != head):
        raise ClusterError(
            f"{path}: no worker node type states its resources; give each type "
            "`resources: {CPU: n, GPU: n}` (ray up fills them in ~/ray_bootstrap_config.yaml)"
        )
    return autoscaler_limits(config)


def find_autoscaler_config(explicit: str | None, joined_cluster: bool) -> Path | None:
    """``explicit`` if given; else, on a cluster the sweep joined (not one it started), the
    launcher's config on the head (``ray job submit`` runs the driver there)."""
    if explicit:
        return Path(explicit).expanduser()
    default = Path(BOOTSTRAP_CONFIG).expanduser()
    return default if joined_cluster and default.is_file() else None


def trial_head_memory(head_memory: float | None) -> float:
    """Bytes of Ray ``memory`` each trial reserves on the head: ``TRIAL_HEAD_MEMORY``, or all
    of a smaller head's (a laptop then runs one trial at a time instead of none)."""
    return TRIAL_HEAD_MEMORY if head_memory is None else min(TRIAL_HEAD_MEMORY, head_memory)


def head_node() -> dict[str, Any]:
    """The live head node's entry of ``ray.nodes()``; {} if none is up."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and HEAD_NODE_RESOURCE in (node.get("Resources") or {}):
            return node
    return {}


def head_node_memory() -> float | None:
    """The head node's Ray ``memory`` resource (bytes), None if no live head reports one."""
    memory = head_node().get("Resources", {}).get("memory")
    return float(memory) if memory else None


def cluster_concurrency(
    need: dict[str, float],
    cap: int | None,
    num_samples: int | None,
    config_path: Path | None,
    log: Callable[[str], None] = print,
) -> tuple[int, bool, float]:
    """Plan concurrency on the connected Ray cluster and print the start line; returns
    ``(max_concurrent_trials, autoscaling, head memory each trial reserves)``."""
    import ray

    limit = load_autoscaler_limits(config_path) if config_path else None
    head = head_node_memory()
    n, line = plan_concurrency(need, ray.cluster_resources(), cap, limit, num_samples, head)
    if config_path:
        line += f" (config {config_path}" + ("" if limit else ": local provider, fixed nodes") + ")"
    log(line)
    return n, limit is not None, trial_head_memory(head)


def config_plan(need: dict[str, float], cap: int | None, num_samples: int | None,
                config_path: str | Path) -> str:
    """The start line a sweep would print on the cluster ``config_path`` describes (before any
    node is up: ``--check --cluster-config``); the head's memory is not known there."""
    limit = load_autoscaler_limits(config_path)
    if limit is None:
        return f"cluster: {config_path} has fixed nodes; concurrency is sized on the live cluster"
    _, line = plan_concurrency(need, {}, cap, limit, num_samples, None)
    return f"cluster: {line.split('; up now:')[0]} (config {config_path})"


def check_storage(storage: str, nodes: int, autoscaling: bool, shared: bool) -> None:
    """Refuse a node-local ``--storage`` where trials may run on other nodes: Ray Train would
    fail on the first checkpoint a remote node saves, and the results would be scattered."""
    if "://" in storage or shared or (nodes <= 1 and not autoscaling):
        return
    where = f"has {nodes} nodes" if nodes > 1 else "autoscales"
    raise ClusterError(
        f"--storage {storage} is a local path but the Ray cluster {where}: use "
        "--storage s3://BUCKET/PREFIX, or a shared mount (NFS) at the same path on every node "
        "with --shared-storage"
    )


def check_local_data(cfg: dict[str, Any], nodes: int, autoscaling: bool, shared: bool) -> None:
    """Refuse local data paths (corpus, lists, banks, an initial checkpoint) where trials may
    run on other nodes: their data tasks would find no such file there and skip every
    utterance. One line naming the first such key; ``shared``: the paths are a shared mount."""
    found = local_paths(cfg)
    if not found or shared or (nodes <= 1 and not autoscaling):
        return
    key, value = found[0]
    where = f"has {nodes} nodes" if nodes > 1 else "autoscales"
    raise ClusterError(
        f"{key}: {value} is a local path but the Ray cluster {where}: publish the data to object "
        "storage (`speakertune prepare publish DIR s3://BUCKET/PREFIX`) and name the s3:// "
        "manifest in the space, or use a shared mount at the same path on every node with "
        "--shared-storage"
    )


def alive_nodes() -> int:
    """Live nodes of the connected Ray cluster."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def autoscaling_env() -> None:
    """This process's Train runs wait long enough for new nodes (``START_TIMEOUT_ENV`` is one
    Ray Train passes on to its controller); a value the user set is kept."""
    os.environ.setdefault(START_TIMEOUT_ENV, str(AUTOSCALING_WORKER_START_TIMEOUT_S))
