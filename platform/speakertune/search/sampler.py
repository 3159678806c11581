"""Optuna define-by-run sampling of a ``SearchSpace`` and the trial config it gives.

``suggest`` samples the active parameters (a parameter whose ``when`` conditions fail is not
sampled at all), ``trial_config`` turns the sampled dotted values into a full config, and
``check_builds`` builds a few sampled configs so a bad component option fails before Ray starts,
and ``check_data`` reads the corpus roles (a bad ``data.test`` entry fails there too).
"""

from __future__ import annotations

import copy
from typing import Any

from speakertune.config import ConfigError, resolve, set_dotted, set_names
from speakertune.search.space import COMPONENTS, Param, SearchSpace, SpaceError


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


class SpaceSampler:
    """Picklable define-by-run function for ``OptunaSearch(space=...)``."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        suggest(trial, self.space)  # OptunaSearch reads the values off the trial


def trial_config(
    base: dict[str, Any],
    flat: dict[str, Any],
    components: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """DEFAULTS <- base <- per-component kwargs <- sampled dotted values.

    A sampled ``<component>.name`` that differs from the base replaces that component's dict
    (``config.set_names``), so that e.g. a default margin never rides on plain softmax.
    """
    cfg = resolve(base)
    rest = set_names(cfg, flat)
    for section, by_name in (components or {}).items():
        node = cfg[section]
        if isinstance(node, dict) and node["name"] in by_name:
            cfg[section] = {**node, **copy.deepcopy(by_name[node["name"]]), "name": node["name"]}
    for path, value in rest.items():
        set_dotted(cfg, path, copy.deepcopy(value))
    return cfg


def check_builds(space: SearchSpace, samples: int = 4, seed: int = 0) -> int:
    """Build the encoder and loss of every component choice (plus a few random samples), so a
    bad component option fails here, before Ray starts. Returns the number of configs built."""
    import optuna

    from speakertune.frontend.batch import frontend_mode
    from speakertune.frontend.features import feature_dim
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for p in space.params.values():
        if p.kind == "choice" and p.path.split(".")[0] in COMPONENTS and p.path.endswith(".name"):
            for v in p.args:
                study.enqueue_trial({p.path: v}, skip_if_exists=True)
    n = len(study.get_trials()) + samples
    seen: set[str] = set()
    banks: set[str] = set()
    for _ in range(n):
        flat = suggest(study.ask(), space)
        cfg = space.trial_config(flat)
        _check_banks_once(cfg, space.source, banks)
        key = repr([cfg[k] for k in ("model", "pooling", "loss", "features", "embed_dim")])
        if key in seen:
            continue
        seen.add(key)
        try:
            dim = feature_dim(cfg)
            frontend_mode(cfg)  # frontend.device: a known value; gpu only where CUDA is
            build_encoder(cfg["model"], cfg["pooling"], dim, int(cfg["embed_dim"]))
            build_loss(cfg["loss"], int(cfg["embed_dim"]), 8)
        except (ConfigError, ValueError, TypeError, KeyError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpaceError(f"{space.source}: {msg} (with {flat})") from None
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


def _check_banks_once(cfg: dict[str, Any], source: str, seen: set[str]) -> None:
    """A noise/RIR bank the augmentation needs must exist and hold audio (listed once each)."""
    from speakertune.frontend.banks import AugmentError, check_banks, needed_banks

    aug = cfg["augment"]
    key = repr(("banks", needed_banks(aug), aug["noise_bank"], aug["rir_bank"]))
    if key not in seen:
        seen.add(key)
        try:
            check_banks(cfg, where=f"{source}: augment")
        except AugmentError as exc:
            raise SpaceError(str(exc)) from None
