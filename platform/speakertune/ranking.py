"""Which scoring backend ranked a checkpoint on dev, so later scoring can default to it.

Validation scores every epoch with each of ``VAL_BACKENDS``; ``trainer.val_backend`` (in a sweep:
``search.backend``) names the one whose dev EER is the trial's ``val_eer``, and only that one:
never a best-of, which would pick on dev noise. ``checkpoint.save_checkpoint`` records it as
``metrics["ranked_backend"]``; for older checkpoints it is derived again from the saved dev EERs
and config (their ``best``: the lower EER).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from speakertune.metric_keys import VAL_BACKENDS, dev_eer

RANKED_KEY = "ranked_backend"


def _eer(metrics: Mapping[str, Any], name: str) -> float:
    value = metrics.get(dev_eer(name))
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def ranked_backend(metrics: Mapping[str, Any], val_backend: str = "best") -> str | None:
    """The backend whose dev EER is the checkpoint's ``val_eer``: ``val_backend`` when it names
    one and its EER is finite, None when that backend failed (NaN: no fallback to the other);
    ``best`` (older configs only) is the one with the lowest finite EER.

    >>> ranked_backend({"val_eer_cosine": 0.0746, "val_eer_plda": 0.0407})
    'plda'
    >>> ranked_backend({"val_eer_cosine": 0.0746, "val_eer_plda": float("nan")}, "plda") is None
    True
    """
    if val_backend not in (*VAL_BACKENDS, "best"):
        from speakertune.config import ConfigError

        raise ConfigError(f"trainer.val_backend: {val_backend!r} is not best, cosine or plda")
    finite = {n: e for n in VAL_BACKENDS if math.isfinite(e := _eer(metrics, n))}
    if val_backend != "best":
        return val_backend if val_backend in finite else None
    return min(finite, key=finite.__getitem__) if finite else None  # ties: cosine


def ranked_by_config(metrics: Mapping[str, Any], cfg: Mapping[str, Any] | None) -> str | None:
    """``ranked_backend`` with the config's ``trainer.val_backend`` (default cosine; an unknown
    value, or ``best`` from an old config, ranks by the lower EER)."""
    val_backend = str(((cfg or {}).get("trainer") or {}).get("val_backend", "cosine"))
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

    >>> m = {"val_eer_cosine": 0.0746, "val_eer_plda": 0.0407}
    >>> checkpoint_backend(m, {"trainer": {"val_backend": "plda"}})[0]
    'plda'
    """
    metrics = metrics or {}
    eers = ", ".join(f"{n} {100 * _eer(metrics, n):.2f}%" for n in VAL_BACKENDS
                     if math.isfinite(_eer(metrics, n)))
    name = metrics.get(RANKED_KEY)
    if name not in VAL_BACKENDS:
        name = ranked_by_config(metrics, cfg)
    if name is None:
        return "cosine", ("the checkpoint records no dev EER for a ranked backend; cosine needs "
                          "no fitted backend")
    return name, f"the backend this checkpoint was ranked on; dev EER {eers}"
