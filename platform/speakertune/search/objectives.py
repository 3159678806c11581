"""Multi-objective search: the objective names a space may list and the Pareto front.

``search.objectives: [dev_eer, params]`` (or ``macs``, ``latency_ms``) makes Optuna search for the
trade-off rather than the best EER alone. Every objective is minimised; each maps to a key the
trainer reports every epoch:

- ``dev_eer``: ``val_eer``, the dev EER of ``search.backend`` (what a sweep ranks on);
- ``params``: ``num_params``, the encoder's trainable parameters;
- ``macs``: ``macs``, the encoder's multiply-accumulates for 2 s of audio (``models.cost``);
- ``latency_ms``: ``latency_ms``, the time to embed a 3 s utterance on one CPU thread
  (``scoring.latency``), measured once per trial on the trained model.

ASHA (one metric) keeps early-stopping on ``search.metric``; the leaderboard still ranks on it
and marks the Pareto-optimal trials.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OBJECTIVES = {"dev_eer": "val_eer", "params": "num_params", "macs": "macs",
              "latency_ms": "latency_ms"}


def objective_error(value: Any) -> str | None:
    """Why ``value`` is not a valid ``search.objectives`` list (None when it is)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 2:
        return f"must be a list of at least two of {', '.join(OBJECTIVES)}, got {value!r}"
    for name in value:
        if name not in OBJECTIVES:
            return f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}"
    if len(set(value)) != len(value):
        return f"duplicate objective in {value}"
    if "dev_eer" not in value:
        return "must include dev_eer (ASHA stops trials and the leaderboard ranks on it)"
    return None


def metric_keys(objectives: list[str]) -> list[str]:
    """The reported metric of each objective, in order."""
    return [OBJECTIVES[o] for o in objectives]


def searcher_target(search: dict[str, Any]) -> tuple[str | list[str], str | list[str]]:
    """``(metric, mode)`` for ``OptunaSearch``: lists (all ``min``) with objectives, else the
    single ranking metric of the space."""
    objectives = search.get("objectives")
    if not objectives:
        return search["metric"], search["mode"]
    keys = metric_keys(objectives)
    return keys, ["min"] * len(keys)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Which rows of ``values`` [n, k] (every column minimised) no other row dominates.

    Row j dominates row i when it is <= in every column and < in at least one. Rows with a
    NaN are never optimal and never dominate. Ties (identical rows) are all optimal.

    Example: ``pareto_mask(np.array([[0.1, 5], [0.2, 3], [0.3, 4]]))`` -> ``[True, True, False]``.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be [n, k], got shape {v.shape}")
    ok = ~np.isnan(v).any(axis=1)
    w = v[ok]
    # dominated[i] = any j with w[j] <= w[i] everywhere and w[j] < w[i] somewhere
    le = (w[:, None, :] <= w[None, :, :]).all(axis=2)  # [j, i]
    lt = (w[:, None, :] < w[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    out = np.zeros(len(v), dtype=bool)
    out[np.flatnonzero(ok)] = ~dominated
    return out
