"""Storage credentials kept out of ``train_loop_config``.

Ray Train keeps a run's ``train_loop_config`` in its run state, which the dashboard serves
(``/api/train/v2/runs``) to anyone who reaches it; its sanitiser truncates deep dicts but
prints shallow ones. So the driver masks every secret of ``data.storage`` and of the corpus's
storage options there and hands the values to the workers through the object store, where
only the job's own processes can read them.
"""

from __future__ import annotations

from typing import Any

import ray

from speakertune.redact import split_secrets

SECRETS_KEY = "secrets"  # meta[SECRETS_KEY]: an ObjectRef, or absent when there are none


def seal(cfg: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(cfg, meta)`` with credentials masked and put in the object store (driver side)."""
    storage, from_cfg = split_secrets(cfg["data"].get("storage"))
    options, from_meta = split_secrets(meta.get("storage_options"))
    if not (from_cfg or from_meta):
        return cfg, meta
    cfg = {**cfg, "data": {**cfg["data"], "storage": storage}}
    meta = {**meta, "storage_options": options,
            SECRETS_KEY: ray.put({"storage": from_cfg, "storage_options": from_meta})}
    return cfg, meta


def unseal(cfg: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inverse of ``seal``, on a worker: the credentials back in place."""
    ref = meta.get(SECRETS_KEY)
    if ref is None:
        return cfg, meta
    values = ray.get(ref)
    storage = {**(cfg["data"].get("storage") or {}), **values["storage"]}
    cfg = {**cfg, "data": {**cfg["data"], "storage": storage}}
    options = {**(meta.get("storage_options") or {}), **values["storage_options"]}
    return cfg, {**meta, "storage_options": options}
