"""Optuna define-by-run sampling of a ``SearchSpace`` and the trial config it gives.

``suggest`` samples the active parameters (a parameter whose ``when`` conditions fail is not
sampled at all); ``check_builds`` runs a trial's pre-flight (path rewrite, start-up check, one
training step) on a config per categorical value, so a space that cannot train fails before Ray
starts, and ``check_data`` reads the corpus roles (a bad ``data.test`` entry fails there too).
"""

from __future__ import annotations

from typing import Any

from speakertune.config import RECIPE, ConfigError, get_dotted
from speakertune.data.paths import absolute_paths
from speakertune.frontend.batch import frontend_mode
from speakertune.search.space import Param, SearchSpace, SpaceError
from speakertune.train.preflight import check_config, dry_step


def active(param: Param, values: dict[str, Any]) -> bool:
    """Whether ``param``'s conditions hold for the values sampled so far."""
    return all(dep in values and values[dep] in allowed for dep, allowed in param.when.items())


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample the active parameters with an Optuna trial (define-by-run); returns path -> value."""
    values: dict[str, Any] = {}
    for p in space.params.values():
        if not active(p, values):
            continue
        if p.kind == "choice":
            values[p.path] = trial.suggest_categorical(p.path, p.args)
        elif p.kind == "int":
            values[p.path] = trial.suggest_int(p.path, p.args[0], p.args[1], step=p.step or 1)
        else:
            values[p.path] = trial.suggest_float(
                p.path, float(p.args[0]), float(p.args[1]), log=p.kind == "loguniform", step=p.step
            )
    return values


def cover_points(space: SearchSpace) -> list[dict[str, Any]]:
    """``search.cover``: one first trial per value of each listed choice parameter, so every
    architecture or loss is trained once before TPE narrows in. The others are sampled as
    usual, except those the value's recipe sets (``components``): that first trial is the
    published recipe.

    >>> from speakertune.search.space import parse_space
    >>> space = parse_space({"components": {"loss": {"aam_softmax": {"recipe": {
    ...     "loss": {"margin": 0.2}}}}}, "params": {
    ...     "loss.name": {"choice": ["softmax", "aam_softmax"]},
    ...     "loss.margin": {"uniform": [0.1, 0.4]}}, "search": {"cover": ["loss.name"]}}, "s")
    >>> cover_points(space)
    [{'loss.name': 'softmax'}, {'loss.name': 'aam_softmax', 'loss.margin': 0.2}]
    """
    points = []
    for path in space.search["cover"]:
        section = path[: -len(".name")] if path.endswith(".name") else None
        for v in space.params[path].args:
            point = {path: v}
            recipe = (space.components.get(section, {}).get(v) or {}).get(RECIPE) or {}
            for p in space.params.values():
                value = get_dotted(recipe, p.path)
                if p.path != path and value is not None and _in_domain(p, value):
                    point[p.path] = value
            points.append(point)
    return points


def _in_domain(p: Param, value: Any) -> bool:
    if p.kind == "choice":
        return value in p.args
    return isinstance(value, (int, float)) and p.args[0] <= value <= p.args[1]


class SpaceSampler:
    """Picklable define-by-run function for ``OptunaSearch(space=...)``."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        suggest(trial, self.space)  # OptunaSearch reads the values off the trial


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_builds(space: SearchSpace, samples: int = 4, seed: int = 0) -> int:
    """Run what a trial runs before it trains, on the driver, before Ray starts: for one
    sampled config per value of every categorical parameter (plus a few random samples), the
    trial's own path rewrite and start-up check (``train.preflight.check_config``), then one
    training step on a tiny CPU batch (front end, augmentation banks, encoder, loss,
    optimiser). A config that cannot train raises ``SpaceError`` naming the space, the key and
    the sampled values. Returns the number of distinct configs stepped."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for p in space.params.values():
        if p.kind == "choice":
            for v in p.args:
                study.enqueue_trial({p.path: v}, skip_if_exists=True)
    seen: set[str] = set()
    for _ in range(len(study.get_trials()) + samples):
        flat = suggest(study.ask(), space)
        key = repr(sorted((k, v) for k, v in flat.items()
                          if space.params[k].kind in ("choice", "int")))
        if key in seen:
            continue
        seen.add(key)
        try:
            cfg = absolute_paths(space.trial_config(flat))  # as every trial gets it
            check_config(cfg)
            frontend_mode(cfg)  # frontend.device: a known value (a GPU is the worker's to check)
            dry_step(cfg, seed)
        except (ConfigError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise SpaceError(f"{space.source}: {_first_line(exc)} (with {flat})") from None
    return len(seen)


def check_data(space: SearchSpace) -> str:
    """The base config's ``data`` roles (train, dev, test lists) checked on the driver, before
    Ray starts; returns ``check_roles``' summary line. Errors name the space file and the key."""
    from speakertune.data.corpus import check_roles
    from speakertune.data.errors import DataError

    try:
        return check_roles(space.trial_config({})["data"])
    except (DataError, ConfigError) as exc:
        msg = str(exc)
        raise SpaceError(f"{space.source}: {'base.' if msg.startswith('data.') else ''}{msg}") \
            from None
