"""Search-space YAML: the format, parsing and validation (sampling is in ``search.suggest``).

A space file has ``base`` (fixed config merged over ``config.DEFAULTS``), ``params`` (dotted config
path -> one distribution, optionally ``when`` another parameter has given values), ``search``,
``scheduler`` and ``resources``. Everything is validated before Ray starts so a typo costs a
second, not a cluster; each error is one line naming the file and the key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speakertune.config import (
    DEFAULTS,
    RECIPE,
    RECIPE_KEYS,
    ConfigError,
    deep_merge,
    load_yaml,
    trial_config,
)
from speakertune.metric_keys import RANKABLE
from speakertune.search.finetune import finetune_settings
from speakertune.search.objectives import objective_error
from speakertune.search.params import (  # noqa: F401 - Param, COMPONENTS re-exported
    COMPONENTS,
    EXTRA_KEYS,
    Param,
    SpaceError,
    check_component,
    fail,
    is_num,
    order_params,
    parse_param,
)


def _spaces_dir() -> Path:
    """The checkout's top-level search_spaces/, else the copy an installed wheel ships."""
    top = Path(__file__).resolve().parents[3] / "search_spaces"
    return top if top.is_dir() else Path(__file__).resolve().parents[1] / "search_spaces"


SPACES_DIR = _spaces_dir()

METRICS = RANKABLE
RESOURCE_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker", "data_cpus", "use_gpu")
TOP_KEYS = (
    "name",
    "description",
    "base",
    "components",
    "params",
    "search",
    "scheduler",
    "resources",
    "finetune",
)
SEARCH_DEFAULTS: dict[str, Any] = {
    "num_samples": 4,
    "max_concurrent": None,
    "metric": "val_eer",
    "mode": "min",
    "seed": 0,
    "time_limit_s": None,
    # The one backend whose dev EER is val_eer (sets trainer.val_backend in every trial). Cosine:
    # nothing fitted, so the ranking does not hinge on the PLDA sample or lda_dim, and for
    # margin-softmax embeddings it matches PLDA; plda for losses whose embeddings need it.
    "backend": "cosine",
    # after the sweep, the best-dev-epoch checkpoints of the top k trials are scored once on
    # each data.test list (reported in the leaderboard and test_results.md, never ranked on)
    "test_top_k": 3,
    # several objectives (search.objectives): Optuna searches for the trade-off, e.g.
    # [dev_eer, params] or [dev_eer, latency_ms]; None: the one metric above
    "objectives": None,
    # choice parameters each of whose values gets one of the first trials (search.suggest)
    "cover": [],
}
ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")


@dataclass
class SearchSpace:
    name: str
    source: str
    base: dict[str, Any]
    params: dict[str, Param]  # in dependency order: a condition's parameter comes first
    search: dict[str, Any]
    scheduler: dict[str, Any]  # {"asha": {...}} or {} for FIFO
    resources: dict[str, Any]
    description: str = ""
    # large-margin fine-tuning of the top trials after the sweep (search.finetune), or None
    finetune: dict[str, Any] | None = None
    # section -> component name -> kwargs used whenever that component is chosen
    components: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def trial_config(self, flat: dict[str, Any]) -> dict[str, Any]:
        """The full trial config: DEFAULTS <- base <- resources <- sampled values."""
        return trial_config(self.base, flat, self.components)


def find_space(name: str | Path) -> Path:
    """``name`` as a path, else ``search_spaces/name`` (``.yaml`` optional)."""
    cand = [Path(name)]
    for root in (Path.cwd() / "search_spaces", SPACES_DIR):
        cand += [root / str(name), root / f"{name}.yaml"]
    for path in cand:
        if path.is_file():
            return path
    raise SpaceError(f"{name}: search space not found (looked in ./ and {SPACES_DIR})")


def load_space(name: str | Path) -> SearchSpace:
    path = find_space(name)
    return parse_space(load_yaml(path), source=str(path), default_name=path.stem)


def _reject_unknown(source: str, section: str, raw: dict, known: Any) -> None:
    """One-line error naming the first key of ``raw`` that ``known`` lacks."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise fail(source, f"{section}.{unknown[0]}", f"unknown key; known: {', '.join(known)}")


def _check_cover(source: str, cover: Any, params: dict[str, Param]) -> None:
    """``search.cover`` lists unconditional choice parameters of the space."""
    if not isinstance(cover, list):
        raise fail(source, "search.cover", f"must be a list of choice parameters, got {cover!r}")
    for path in cover:
        p = params.get(path)
        if p is None or p.kind != "choice" or p.when:
            raise fail(source, "search.cover", f"{path!r} is not an unconditional choice "
                       "parameter of params")


def _parse_search(source: str, raw: Any, params: dict[str, Param]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail(source, "search", "must be a mapping")
    _reject_unknown(source, "search", raw, SEARCH_DEFAULTS)
    s = {**SEARCH_DEFAULTS, **raw}
    k = s["test_top_k"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise fail(source, "search.test_top_k", f"must be an integer >= 0, got {k!r}")
    for k in ("num_samples", "max_concurrent"):
        v = s[k]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise fail(source, f"search.{k}", f"must be a positive integer, got {v!r}")
    if s["num_samples"] is None:
        raise fail(source, "search.num_samples", "must be a positive integer")
    if s["metric"] not in METRICS:
        raise fail(
            source, "search.metric", f"unknown metric {s['metric']!r}; known: {', '.join(METRICS)}"
        )
    if s["mode"] not in ("min", "max"):
        raise fail(source, "search.mode", f"must be min or max, got {s['mode']!r}")
    if s["backend"] not in ("cosine", "plda"):
        raise fail(source, "search.backend", f"must be cosine or plda, got {s['backend']!r}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise fail(source, "search.seed", f"must be an integer, got {s['seed']!r}")
    why = objective_error(s["objectives"])
    if why:
        raise fail(source, "search.objectives", why)
    _check_cover(source, s["cover"], params)
    t = s["time_limit_s"]
    if t is not None and (not is_num(t) or t <= 0):
        raise fail(source, "search.time_limit_s", f"must be a positive number, got {t!r}")
    return s


def _parse_scheduler(source: str, raw: Any, epochs: int) -> dict[str, Any]:
    if raw is None or raw == {} or raw == "fifo":
        return {}
    if not isinstance(raw, dict) or set(raw) != {"asha"}:
        raise fail(source, "scheduler", "must be {asha: {grace_period, reduction_factor, max_t}}")
    asha = raw["asha"] or {}
    if not isinstance(asha, dict):
        raise fail(source, "scheduler.asha", "must be a mapping")
    _reject_unknown(source, "scheduler.asha", asha, ASHA_KEYS)
    out = {"grace_period": 1, "reduction_factor": 2, "max_t": epochs, **asha}
    for k in ASHA_KEYS:
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise fail(source, f"scheduler.asha.{k}", f"must be a positive integer, got {v!r}")
    if out["reduction_factor"] < 2:
        raise fail(source, "scheduler.asha.reduction_factor", "must be >= 2")
    if out["grace_period"] > out["max_t"]:
        raise fail(
            source,
            "scheduler.asha.grace_period",
            f"({out['grace_period']}) exceeds max_t ({out['max_t']})",
        )
    return {"asha": out}


def _parse_resources(source: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail(source, "resources", "must be a mapping")
    for k, v in raw.items():
        key = f"resources.{k}"
        if k not in RESOURCE_KEYS:
            raise fail(source, key, f"unknown key; known: {', '.join(RESOURCE_KEYS)}")
        if k == "use_gpu":
            if not isinstance(v, bool):
                raise fail(source, key, f"must be true or false, got {v!r}")
        elif not is_num(v) or v < 0 or (k == "num_workers" and (not isinstance(v, int) or v < 1)):
            raise fail(source, key, f"must be a non-negative number (num_workers >= 1), got {v!r}")
    return dict(raw)


def parse_space(
    data: dict[str, Any], source: str = "<space>", default_name: str = "sweep"
) -> SearchSpace:
    """Validate a loaded space mapping; raise ``SpaceError`` naming the first bad key."""
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: top level must be a mapping")
    for k in data:
        if k not in TOP_KEYS:
            raise fail(source, str(k), f"unknown top-level key; known: {', '.join(TOP_KEYS)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise fail(source, "base", "must be a mapping")
    for k, v in base.items():
        if k not in DEFAULTS:
            raise fail(
                source, f"base.{k}", f"unknown config section; known: {', '.join(DEFAULTS)}"
            )
        if k in COMPONENTS:
            name = v.get("name") if isinstance(v, dict) else v
            if name is not None:
                check_component(source, f"base.{k}.name", k, name)
    components = _parse_components(source, data.get("components"))
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise fail(source, "params", "must be a mapping of dotted config paths")
    _check_roles(source, base, raw_params)
    params = {str(p): parse_param(source, str(p), spec) for p, spec in raw_params.items()}
    params = order_params(source, params)
    resources = _parse_resources(source, data.get("resources"))
    merged = deep_merge(DEFAULTS, base)
    epochs = merged["trainer"]["epochs"]
    if not isinstance(epochs, int) or epochs < 1:
        raise fail(source, "base.trainer.epochs", f"must be a positive integer, got {epochs!r}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise fail(source, "name", f"must be a non-empty string without '/', got {name!r}")
    base = deep_merge(base, {"trainer": _resources_to_trainer(resources)}) if resources else base
    search = _parse_search(source, data.get("search") or {}, params)
    base = deep_merge(base, {"trainer": {"val_backend": search["backend"]}})
    return SearchSpace(
        name=name,
        source=source,
        base=base,
        params=params,
        search=search,
        scheduler=_parse_scheduler(source, data.get("scheduler"), epochs),
        resources=resources,
        description=str(data.get("description", "")),
        components=components,
        finetune=_parse_finetune(source, data),
    )


def _parse_finetune(source: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``finetune:`` section over ``DEFAULTS["finetune"]`` (None when absent)."""
    if "finetune" not in data:
        return None
    try:
        return finetune_settings(data["finetune"])
    except ConfigError as exc:
        raise SpaceError(f"{source}: {exc}") from None


def _check_roles(source: str, base: dict[str, Any], params: dict[str, Any]) -> None:
    """The removed ``data.trials`` and a sweep-level ``trainer.val_backend`` are one-line errors
    pointing at their replacements (dev and test never mix; one named ranking backend)."""
    data = base.get("data") if isinstance(base.get("data"), dict) else {}
    if data.get("trials") is not None or "data.trials" in params:
        key = "base.data.trials" if data.get("trials") is not None else "params.data.trials"
        raise fail(source, key, "removed; use data.dev_trials for a dev list the sweep ranks "
                    "on, or data.test: {name: {trials: ...}} for official lists scored after it")
    trainer = base.get("trainer") if isinstance(base.get("trainer"), dict) else {}
    if "val_backend" in trainer or "trainer.val_backend" in params:
        key = ("base." if "val_backend" in trainer else "params.") + "trainer.val_backend"
        raise fail(source, key, "a sweep ranks on search.backend (cosine or plda); set that")


def _parse_components(source: str, raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail(source, "components", "must be a mapping {section: {name: {kwargs}}}")
    for section, by_name in raw.items():
        key = f"components.{section}"
        if section not in COMPONENTS:
            raise fail(source, key, f"not a component section; known: {', '.join(COMPONENTS)}")
        if not isinstance(by_name, dict):
            raise fail(source, key, "must map component names to keyword arguments")
        for name, kwargs in by_name.items():
            check_component(source, f"{key}.{name}", section, name)
            if not isinstance(kwargs, dict) or "name" in kwargs:
                raise fail(source, f"{key}.{name}", "must be a mapping of keyword arguments")
            recipe = kwargs.get(RECIPE, {})
            if not isinstance(recipe, dict):
                raise fail(source, f"{key}.{name}.{RECIPE}", "must be a mapping of config "
                           f"sections ({', '.join(RECIPE_KEYS)})")
            _reject_unknown(source, f"{key}.{name}.{RECIPE}", recipe, RECIPE_KEYS)
    return raw


def _resources_to_trainer(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    if res.get("gpus_per_worker", 0) > 0:
        out.setdefault("use_gpu", True)
    return out
