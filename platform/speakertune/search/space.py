"""Search-space YAML: the format, parsing and validation (sampling is in ``search.sampler``).

A space file has ``base`` (fixed config merged over ``config.DEFAULTS``), ``params`` (dotted config
path -> one distribution, optionally ``when`` another parameter has given values), ``search``,
``scheduler`` and ``resources``. Everything is validated before Ray starts so a typo costs a
second, not a cluster; each error is one line naming the file and the key path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speakertune.config import DEFAULTS, ConfigError, deep_merge, load_yaml
from speakertune.search.objectives import objective_error


def _spaces_dir() -> Path:
    """The checkout's top-level search_spaces/, else the copy an installed wheel ships."""
    top = Path(__file__).resolve().parents[3] / "search_spaces"
    return top if top.is_dir() else Path(__file__).resolve().parents[1] / "search_spaces"


SPACES_DIR = _spaces_dir()

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
METRICS = (
    "val_eer",
    "val_eer_cosine",
    "val_eer_plda",
    "val_min_dcf_cosine",
    "val_min_dcf_plda",
    "train_loss",
    "train_acc",
)
# Component sections whose ``name`` must exist in a registry (registry attribute name).
COMPONENTS = {"model": "MODELS", "pooling": "POOLINGS", "loss": "LOSSES", "features": "FEATURES"}
RESOURCE_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker", "data_cpus", "use_gpu")
# Keys a trainer accepts beyond DEFAULTS (resources can set them).
EXTRA_KEYS = {"trainer": {"gpus_per_worker"}}
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
}
ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")


class SpaceError(ConfigError):
    """An invalid search space; the message is one line naming the file and the key."""


@dataclass
class Param:
    """One searched parameter: a distribution over a dotted config path."""

    path: str
    kind: str  # one of DISTRIBUTIONS
    args: list[Any]
    step: float | int | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)


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
    # large-margin fine-tuning of the top trials after the sweep (train.finetune), or None
    finetune: dict[str, Any] | None = None
    # section -> component name -> kwargs used whenever that component is chosen
    components: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def trial_config(self, flat: dict[str, Any]) -> dict[str, Any]:
        """The full trial config: DEFAULTS <- base <- resources <- sampled values."""
        from speakertune.search.sampler import trial_config  # sampler imports this module

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


def _fail(source: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {msg}")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _known_names(section: str) -> set[str]:
    """Registered names of a component kind."""
    from speakertune import registry

    registry.load_all()
    return set(getattr(registry, COMPONENTS[section]).names())


def _check_component(source: str, key: str, section: str, value: Any) -> None:
    known = _known_names(section)
    if value not in known:
        raise _fail(source, key, f"unknown {section} {value!r}; known: {', '.join(sorted(known))}")


def _check_path(source: str, key: str, path: str) -> None:
    parts = path.split(".")
    if not all(parts):
        raise _fail(source, key, f"bad dotted path {path!r}")
    top = parts[0]
    if top not in DEFAULTS:
        raise _fail(source, key, f"unknown config section {top!r}; known: {', '.join(DEFAULTS)}")
    node = DEFAULTS[top]
    if not isinstance(node, dict):
        if len(parts) > 1:
            raise _fail(source, key, f"{top!r} is a plain value, not a section")
        return
    if top in COMPONENTS or top == "backend" or len(parts) < 2:
        return  # component kwargs differ per component; they are checked when it is built
    if parts[1] not in node and parts[1] not in EXTRA_KEYS.get(top, ()):
        raise _fail(source, key, f"unknown key {parts[1]!r} in {top!r}; known: {', '.join(node)}")


def _parse_param(source: str, path: str, spec: Any) -> Param:
    key = f"params.{path}"
    _check_path(source, key, path)
    if not isinstance(spec, dict):
        raise _fail(source, key, f"must be a mapping with one of {', '.join(DISTRIBUTIONS)}")
    unknown = set(spec) - set(DISTRIBUTIONS) - {"when", "step"}
    if unknown:
        raise _fail(source, key, f"unknown field {sorted(unknown)[0]!r}")
    kinds = [k for k in DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        raise _fail(source, key, f"needs exactly one of {', '.join(DISTRIBUTIONS)}, got {kinds}")
    kind = kinds[0]
    args = spec[kind]
    where = f"{key}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise _fail(source, where, "must be a non-empty list")
        for v in args:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise _fail(source, where, f"choices must be scalars, got {v!r}")
        if len(set(map(repr, args))) != len(args):
            raise _fail(source, where, "duplicate choices")
        if path.endswith(".name") and path.split(".")[0] in COMPONENTS:
            for v in args:
                _check_component(source, where, path.split(".")[0], v)
    else:
        if not isinstance(args, list) or len(args) != 2 or not all(map(_is_num, args)):
            raise _fail(source, where, f"must be [low, high] numbers, got {args!r}")
        lo, hi = args
        if kind == "int" and not all(isinstance(v, int) for v in args):
            raise _fail(source, where, f"bounds must be integers, got {args!r}")
        if lo > hi or (kind != "int" and lo == hi):
            raise _fail(source, where, f"low ({lo}) must be below high ({hi})")
        if kind == "loguniform" and lo <= 0:
            raise _fail(source, where, f"low ({lo}) must be > 0 for a log scale")
    step = spec.get("step")
    if step is not None:
        if kind in ("choice", "loguniform"):
            raise _fail(source, f"{key}.step", f"not allowed with {kind}")
        if not _is_num(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise _fail(
                source,
                f"{key}.step",
                f"must be a positive {'integer' if kind == 'int' else 'number'}",
            )
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise _fail(source, f"{key}.when", "must be a mapping {param: value or [values]}")
    when = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in when.items()}
    return Param(path=path, kind=kind, args=list(args), step=step, when=when)


def _order(source: str, params: dict[str, Param]) -> dict[str, Param]:
    """Check conditions and sort so that every condition's parameter is sampled first."""
    for p in params.values():
        for dep, values in p.when.items():
            key = f"params.{p.path}.when.{dep}"
            if dep == p.path:
                raise _fail(source, key, "a parameter cannot depend on itself")
            if dep not in params:
                raise _fail(source, key, f"condition on unknown parameter {dep!r}")
            d = params[dep]
            if d.kind != "choice":
                raise _fail(
                    source, key, f"conditions need a 'choice' parameter, {dep!r} is {d.kind}"
                )
            bad = [v for v in values if v not in d.args]
            if bad:
                raise _fail(source, key, f"{bad[0]!r} is not one of {dep}'s choices {d.args}")
    ordered: dict[str, Param] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise _fail(source, f"params.{name}.when", "conditions form a cycle")
        visiting.add(name)
        for dep in params[name].when:
            visit(dep)
        visiting.discard(name)
        ordered[name] = params[name]

    for name in params:
        visit(name)
    return ordered


def _reject_unknown(source: str, section: str, raw: dict, known: Any) -> None:
    """One-line error naming the first key of ``raw`` that ``known`` lacks."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise _fail(source, f"{section}.{unknown[0]}", f"unknown key; known: {', '.join(known)}")


def _parse_search(source: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(source, "search", "must be a mapping")
    _reject_unknown(source, "search", raw, SEARCH_DEFAULTS)
    s = {**SEARCH_DEFAULTS, **raw}
    k = s["test_top_k"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise _fail(source, "search.test_top_k", f"must be an integer >= 0, got {k!r}")
    for k in ("num_samples", "max_concurrent"):
        v = s[k]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise _fail(source, f"search.{k}", f"must be a positive integer, got {v!r}")
    if s["num_samples"] is None:
        raise _fail(source, "search.num_samples", "must be a positive integer")
    if s["metric"] not in METRICS:
        raise _fail(
            source, "search.metric", f"unknown metric {s['metric']!r}; known: {', '.join(METRICS)}"
        )
    if s["mode"] not in ("min", "max"):
        raise _fail(source, "search.mode", f"must be min or max, got {s['mode']!r}")
    if s["backend"] not in ("cosine", "plda"):
        raise _fail(source, "search.backend", f"must be cosine or plda, got {s['backend']!r}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise _fail(source, "search.seed", f"must be an integer, got {s['seed']!r}")
    why = objective_error(s["objectives"])
    if why:
        raise _fail(source, "search.objectives", why)
    t = s["time_limit_s"]
    if t is not None and (not _is_num(t) or t <= 0):
        raise _fail(source, "search.time_limit_s", f"must be a positive number, got {t!r}")
    return s


def _parse_scheduler(source: str, raw: Any, epochs: int) -> dict[str, Any]:
    if raw is None or raw == {} or raw == "fifo":
        return {}
    if not isinstance(raw, dict) or set(raw) != {"asha"}:
        raise _fail(source, "scheduler", "must be {asha: {grace_period, reduction_factor, max_t}}")
    asha = raw["asha"] or {}
    if not isinstance(asha, dict):
        raise _fail(source, "scheduler.asha", "must be a mapping")
    _reject_unknown(source, "scheduler.asha", asha, ASHA_KEYS)
    out = {"grace_period": 1, "reduction_factor": 2, "max_t": epochs, **asha}
    for k in ASHA_KEYS:
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(source, f"scheduler.asha.{k}", f"must be a positive integer, got {v!r}")
    if out["reduction_factor"] < 2:
        raise _fail(source, "scheduler.asha.reduction_factor", "must be >= 2")
    if out["grace_period"] > out["max_t"]:
        raise _fail(
            source,
            "scheduler.asha.grace_period",
            f"({out['grace_period']}) exceeds max_t ({out['max_t']})",
        )
    return {"asha": out}


def _parse_resources(source: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(source, "resources", "must be a mapping")
    for k, v in raw.items():
        key = f"resources.{k}"
        if k not in RESOURCE_KEYS:
            raise _fail(source, key, f"unknown key; known: {', '.join(RESOURCE_KEYS)}")
        if k == "use_gpu":
            if not isinstance(v, bool):
                raise _fail(source, key, f"must be true or false, got {v!r}")
        elif not _is_num(v) or v < 0 or (k == "num_workers" and (not isinstance(v, int) or v < 1)):
            raise _fail(source, key, f"must be a non-negative number (num_workers >= 1), got {v!r}")
    return dict(raw)


def parse_space(
    data: dict[str, Any], source: str = "<space>", default_name: str = "sweep"
) -> SearchSpace:
    """Validate a loaded space mapping; raise ``SpaceError`` naming the first bad key."""
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: top level must be a mapping")
    for k in data:
        if k not in TOP_KEYS:
            raise _fail(source, str(k), f"unknown top-level key; known: {', '.join(TOP_KEYS)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise _fail(source, "base", "must be a mapping")
    for k, v in base.items():
        if k not in DEFAULTS:
            raise _fail(
                source, f"base.{k}", f"unknown config section; known: {', '.join(DEFAULTS)}"
            )
        if k in COMPONENTS:
            name = v.get("name") if isinstance(v, dict) else v
            if name is not None:
                _check_component(source, f"base.{k}.name", k, name)
    components = _parse_components(source, data.get("components"))
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise _fail(source, "params", "must be a mapping of dotted config paths")
    _check_roles(source, base, raw_params)
    params = {str(p): _parse_param(source, str(p), spec) for p, spec in raw_params.items()}
    params = _order(source, params)
    resources = _parse_resources(source, data.get("resources"))
    merged = deep_merge(DEFAULTS, base)
    epochs = merged["trainer"]["epochs"]
    if not isinstance(epochs, int) or epochs < 1:
        raise _fail(source, "base.trainer.epochs", f"must be a positive integer, got {epochs!r}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(source, "name", f"must be a non-empty string without '/', got {name!r}")
    base = deep_merge(base, {"trainer": _resources_to_trainer(resources)}) if resources else base
    search = _parse_search(source, data.get("search") or {})
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
    from speakertune.train.finetune import finetune_settings

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
        raise _fail(source, key, "removed; use data.dev_trials for a dev list the sweep ranks "
                    "on, or data.test: {name: {trials: ...}} for official lists scored after it")
    trainer = base.get("trainer") if isinstance(base.get("trainer"), dict) else {}
    if "val_backend" in trainer or "trainer.val_backend" in params:
        key = ("base." if "val_backend" in trainer else "params.") + "trainer.val_backend"
        raise _fail(source, key, "a sweep ranks on search.backend (cosine or plda); set that")


def _parse_components(source: str, raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(source, "components", "must be a mapping {section: {name: {kwargs}}}")
    for section, by_name in raw.items():
        key = f"components.{section}"
        if section not in COMPONENTS:
            raise _fail(source, key, f"not a component section; known: {', '.join(COMPONENTS)}")
        if not isinstance(by_name, dict):
            raise _fail(source, key, "must map component names to keyword arguments")
        for name, kwargs in by_name.items():
            _check_component(source, f"{key}.{name}", section, name)
            if not isinstance(kwargs, dict) or "name" in kwargs:
                raise _fail(source, f"{key}.{name}", "must be a mapping of keyword arguments")
    return raw


def _resources_to_trainer(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    if res.get("gpus_per_worker", 0) > 0:
        out.setdefault("use_gpu", True)
    return out
