"""Name -> builder registries, so a YAML search space can name any component."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from speakertune.config import ConfigError


class UnknownComponentError(KeyError):
    """Raised when a config names a component that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry:
    """A small registry: ``@MODELS.register("ecapa_tdnn")`` then ``MODELS.build(cfg)``.

    ``provider`` is the module whose import registers the components: looked up on first use,
    so a lower layer (a checkpoint loading its backends) finds them without importing it."""

    def __init__(self, kind: str, provider: str | None = None) -> None:
        self.kind = kind
        self.provider = provider
        self._items: dict[str, Callable[..., Any]] = {}

    def _load(self) -> None:
        if self.provider:
            importlib.import_module(self.provider)
            self.provider = None

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            self._load()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"
            )
        return self._items[name]

    def build(self, cfg: dict[str, Any] | str, **extra: Any) -> Any:
        """Build from ``{"name": ..., **kwargs}`` (or a bare name) plus ``extra`` kwargs."""
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        if name is None:
            raise UnknownComponentError(f"{self.kind} config has no 'name' field: {cfg}")
        return self.get(name)(**cfg, **extra)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load()
        return name in self._items


MODELS = Registry("model", "speakertune.models")
POOLINGS = Registry("pooling", "speakertune.pooling")
LOSSES = Registry("loss", "speakertune.losses")
FEATURES = Registry("feature", "speakertune.frontend.features")
BACKENDS = Registry("backend", "speakertune.scoring.backends")
CLUSTERINGS = Registry("clustering", "speakertune.diarization.clustering")

REGISTRIES = {
    "models": MODELS,
    "poolings": POOLINGS,
    "losses": LOSSES,
    "features": FEATURES,
    "backends": BACKENDS,
    "clusterings": CLUSTERINGS,
}


def load_all() -> None:
    """Import every component module so that all names are registered."""
    for registry in REGISTRIES.values():
        registry._load()


def build_checked(registry: Registry, cfg: dict[str, Any] | str, where: str, **extra: Any) -> Any:
    """``registry.build(cfg, **extra)``, but an unknown or invalid option raises ``ConfigError``
    naming the config path (``where``), e.g. ``model.chanels: unknown option for ecapa_tdnn``."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg or {})
    name = cfg.get("name")
    builder = registry.get(name) if name is not None else None
    if builder is not None:
        params = inspect.signature(builder).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            accepted = [k for k in params if k not in extra and k != "self"]
            for key in cfg:
                if key != "name" and key not in params:
                    raise ConfigError(
                        f"{where}.{key}: unknown option for {registry.kind} {name!r} "
                        f"(accepted: {', '.join(accepted)})"
                    )
    try:
        return registry.build(cfg, **extra)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where} ({registry.kind} {name!r}): {exc}") from None
