"""Build a registered component from a config dict, turning bad options into one-line errors."""

from __future__ import annotations

import inspect
from typing import Any

from speakertune.config import ConfigError
from speakertune.registry import Registry


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
