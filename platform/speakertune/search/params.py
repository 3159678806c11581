"""Searched parameters of a space file: one distribution per dotted config path, optionally
active only ``when`` another parameter took given values; parsing, checks and the order in which
conditions allow them to be sampled (the file format as a whole is ``search.space``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from speakertune.config import DEFAULTS, ConfigError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
# Component sections whose ``name`` must exist in a registry (registry attribute name).
COMPONENTS = {"model": "MODELS", "pooling": "POOLINGS", "loss": "LOSSES", "features": "FEATURES"}
# Keys a trainer accepts beyond DEFAULTS (resources can set them).
EXTRA_KEYS = {"trainer": {"gpus_per_worker"}}


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


def fail(source: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {msg}")


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def known_names(section: str) -> set[str]:
    """Registered names of a component kind."""
    from speakertune import registry

    registry.load_all()
    return set(getattr(registry, COMPONENTS[section]).names())


def check_component(source: str, key: str, section: str, value: Any) -> None:
    known = known_names(section)
    if value not in known:
        raise fail(source, key, f"unknown {section} {value!r}; known: {', '.join(sorted(known))}")


def check_path(source: str, key: str, path: str) -> None:
    parts = path.split(".")
    if not all(parts):
        raise fail(source, key, f"bad dotted path {path!r}")
    top = parts[0]
    if top not in DEFAULTS:
        raise fail(source, key, f"unknown config section {top!r}; known: {', '.join(DEFAULTS)}")
    node = DEFAULTS[top]
    if not isinstance(node, dict):
        if len(parts) > 1:
            raise fail(source, key, f"{top!r} is a plain value, not a section")
        return
    if top in COMPONENTS or top == "backend" or len(parts) < 2:
        return  # component kwargs differ per component; they are checked when it is built
    if parts[1] not in node and parts[1] not in EXTRA_KEYS.get(top, ()):
        raise fail(source, key, f"unknown key {parts[1]!r} in {top!r}; known: {', '.join(node)}")


def parse_param(source: str, path: str, spec: Any) -> Param:
    key = f"params.{path}"
    check_path(source, key, path)
    if not isinstance(spec, dict):
        raise fail(source, key, f"must be a mapping with one of {', '.join(DISTRIBUTIONS)}")
    unknown = set(spec) - set(DISTRIBUTIONS) - {"when", "step"}
    if unknown:
        raise fail(source, key, f"unknown field {sorted(unknown)[0]!r}")
    kinds = [k for k in DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        raise fail(source, key, f"needs exactly one of {', '.join(DISTRIBUTIONS)}, got {kinds}")
    kind = kinds[0]
    args = spec[kind]
    where = f"{key}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise fail(source, where, "must be a non-empty list")
        for v in args:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise fail(source, where, f"choices must be scalars, got {v!r}")
        if len(set(map(repr, args))) != len(args):
            raise fail(source, where, "duplicate choices")
        if path.endswith(".name") and path.split(".")[0] in COMPONENTS:
            for v in args:
                check_component(source, where, path.split(".")[0], v)
    else:
        if not isinstance(args, list) or len(args) != 2 or not all(map(is_num, args)):
            raise fail(source, where, f"must be [low, high] numbers, got {args!r}")
        lo, hi = args
        if kind == "int" and not all(isinstance(v, int) for v in args):
            raise fail(source, where, f"bounds must be integers, got {args!r}")
        if lo > hi or (kind != "int" and lo == hi):
            raise fail(source, where, f"low ({lo}) must be below high ({hi})")
        if kind == "loguniform" and lo <= 0:
            raise fail(source, where, f"low ({lo}) must be > 0 for a log scale")
    step = spec.get("step")
    if step is not None:
        if kind in ("choice", "loguniform"):
            raise fail(source, f"{key}.step", f"not allowed with {kind}")
        if not is_num(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise fail(
                source,
                f"{key}.step",
                f"must be a positive {'integer' if kind == 'int' else 'number'}",
            )
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise fail(source, f"{key}.when", "must be a mapping {param: value or [values]}")
    when = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in when.items()}
    return Param(path=path, kind=kind, args=list(args), step=step, when=when)


def order_params(source: str, params: dict[str, Param]) -> dict[str, Param]:
    """Check conditions and sort so that every condition's parameter is sampled first."""
    for p in params.values():
        for dep, values in p.when.items():
            key = f"params.{p.path}.when.{dep}"
            if dep == p.path:
                raise fail(source, key, "a parameter cannot depend on itself")
            if dep not in params:
                raise fail(source, key, f"condition on unknown parameter {dep!r}")
            d = params[dep]
            if d.kind != "choice":
                raise fail(
                    source, key, f"conditions need a 'choice' parameter, {dep!r} is {d.kind}"
                )
            bad = [v for v in values if v not in d.args]
            if bad:
                raise fail(source, key, f"{bad[0]!r} is not one of {dep}'s choices {d.args}")
    ordered: dict[str, Param] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise fail(source, f"params.{name}.when", "conditions form a cycle")
        visiting.add(name)
        for dep in params[name].when:
            visit(dep)
        visiting.discard(name)
        ordered[name] = params[name]

    for name in params:
        visit(name)
    return ordered
