"""Which scoring backend ranked a checkpoint on dev, so later scoring can default to it.

Validation scores every epoch with each of ``VAL_BACKENDS``; ``trainer.val_backend`` says which
one's EER is the trial's ``val_eer`` (``best``: the lower). ``checkpoint.save_checkpoint``
records the answer as ``metrics["ranked_backend"]``; for older checkpoints it is derived again
from the saved dev EERs and config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

VAL_BACKENDS = ("cosine", "plda")
RANKED_KEY = "ranked_backend"


def _eer(metrics: Mapping[str, Any], name: str) -> float:
    value = metrics.get(f"val_eer_{name}")
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def ranked_backend(metrics: Mapping[str, Any], val_backend: str = "best") -> str | None:
    """The backend whose dev EER is the checkpoint's ``val_eer``: ``val_backend`` when it names
    one whose EER is finite, else the one with the lowest finite EER (a backend that failed
    has NaN); None when none has a finite EER.

    >>> ranked_backend({"val_eer_cosine": 0.0746, "val_eer_plda": 0.0407})
    'plda'
    >>> ranked_backend({"val_eer_cosine": 0.0746, "val_eer_plda": float("nan")}, "plda")
    'cosine'
    """
    if val_backend not in (*VAL_BACKENDS, "best"):
        from speakertune.config import ConfigError

        raise ConfigError(f"trainer.val_backend: {val_backend!r} is not best, cosine or plda")
    finite = {n: e for n in VAL_BACKENDS if math.isfinite(e := _eer(metrics, n))}
    if val_backend in finite:
        return val_backend
    return min(finite, key=finite.__getitem__) if finite else None  # ties: cosine


def ranked_by_config(metrics: Mapping[str, Any], cfg: Mapping[str, Any] | None) -> str | None:
    """``ranked_backend`` with the config's ``trainer.val_backend`` (an unknown value, from an
    old config, ranks by the lower EER)."""
    val_backend = str(((cfg or {}).get("trainer") or {}).get("val_backend", "best"))
    try:
        return ranked_backend(metrics, val_backend)
    except ValueError:
        return ranked_backend(metrics, "best")


def checkpoint_backend(
    metrics: Mapping[str, Any] | None, cfg: Mapping[str, Any] | None
) -> tuple[str, str]:
    """``(backend, why)`` to score a checkpoint with when the caller did not name one: the
    backend it was ranked on, from its saved metrics (recorded, or derived from its dev EERs
    and ``trainer.val_backend``); cosine, which needs nothing fitted, when it has no dev EER.

    >>> checkpoint_backend({"val_eer_cosine": 0.0746, "val_eer_plda": 0.0407}, {})[0]
    'plda'
    """
    metrics = metrics or {}
    eers = ", ".join(f"{n} {100 * _eer(metrics, n):.2f}%" for n in VAL_BACKENDS
                     if math.isfinite(_eer(metrics, n)))
    name = metrics.get(RANKED_KEY)
    if name not in VAL_BACKENDS:
        name = ranked_by_config(metrics, cfg)
    if name is None:
        return "cosine", "the checkpoint records no dev EER; cosine needs no fitted backend"
    return name, f"the backend this checkpoint was ranked on; dev EER {eers}"
