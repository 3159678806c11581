"""Evaluation features cached on disk, so that the trials of a sweep compute them once.

Every trial validates on the same utterances through the same front end: the first trial that
needs a table's features computes them (``embed.load_features``) and saves them; the others
read the file. A file's name is a hash of everything the features depend on: the rows
(utterance, URI and, for a local file, its size and modification time), the front-end config
(``data.sample_rate``, ``preprocess``, ``features``) and the crop length. A different search
value of any of these is a different file, never a stale one.

Safe under concurrency: a file is written under a unique temporary name and renamed into
place (atomic on POSIX), so a reader sees a whole file or none. Two trials that miss at once
both compute, and their identical results replace each other.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from speakertune.data.storage import has_scheme, written_aside
from speakertune.scoring.embed import Features, load_features

log = logging.getLogger(__name__)
CACHE_DIR = ".feature_cache"  # its folder's name under a sweep's train_runs/
NODE_CACHE = "speakertune-feature-cache"  # under each node's temp dir, for object-store sweeps


def sweep_cache_dir(train_root: str) -> str:
    """Where a sweep's trials share validation features: beside the runs for local storage;
    for ``s3://`` storage (trials on many nodes) in each node's own temp dir, one folder per
    sweep. The files are content-keyed, so every node's copy is right for every trial.

    >>> sweep_cache_dir("runs/s/train_runs")
    'runs/s/train_runs/.feature_cache'
    """
    if not has_scheme(train_root):
        return os.path.join(train_root, CACHE_DIR)
    key = hashlib.sha1(train_root.encode()).hexdigest()[:16]
    # one folder per user: another user's (a root-owned one in a shared /tmp) is not writable
    return os.path.join(tempfile.gettempdir(), f"{NODE_CACHE}-{getpass.getuser()}", key)


def _file_stamp(uri: str) -> list[int] | None:
    """Size and mtime (ns) of a local file; None for remote URIs or missing files."""
    if "://" in uri:
        return None
    try:
        st = os.stat(uri)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def cache_key(df: pd.DataFrame, cfg: dict[str, Any], max_seconds: float | None) -> str:
    """Hex digest of the rows of ``df`` and the config keys that change their features.

    >>> df = pd.DataFrame({"utt": ["u1"], "uri": ["s3://b/u1.flac"]})
    >>> cfg = {"data": {"sample_rate": 16000}, "features": {"name": "fbank"}}
    >>> cache_key(df, cfg, 3.0) == cache_key(df, cfg, 3.0) != cache_key(df, cfg, 4.0)
    True
    """
    rows = [[str(u), str(p), _file_stamp(str(p))] for u, p in zip(df["utt"], df["uri"])]
    front = {
        "sample_rate": (cfg.get("data") or {}).get("sample_rate", 16000),
        "preprocess": cfg.get("preprocess"),
        "features": cfg.get("features"),
        "max_seconds": max_seconds,
    }
    blob = json.dumps([front, rows], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def cached_features(
    df: pd.DataFrame,
    cfg: dict[str, Any],
    cache_dir: str | os.PathLike | None,
    *,
    max_seconds: float | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[Features, bool]:
    """``load_features(df, cfg, ...)`` through the cache in ``cache_dir`` (None: no cache);
    returns the features and whether they came from the cache.

    Example: ``cached_features(val_df, cfg, "runs/s/train_runs/.feature_cache",
    max_seconds=3.0)[0].feats["u1"]`` -> tensor [<= 300, 40].
    """
    if cache_dir is None:
        return load_features(df, cfg, max_seconds=max_seconds,
                             storage_options=storage_options), False
    path = Path(cache_dir) / f"{cache_key(df, cfg, max_seconds)}.pt"
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            return Features(feats=blob["feats"], skipped=blob["skipped"]), True
        except Exception as exc:  # noqa: BLE001 - an unreadable cache file is recomputed
            log.warning("feature cache %s unreadable (%s); recomputing", path, exc)
    out = load_features(df, cfg, max_seconds=max_seconds, storage_options=storage_options)
    _save(path, out)
    return out, False


def _save(path: Path, feats: Features) -> None:
    """Write ``feats`` to ``path`` atomically; a failure only costs the next reader a miss."""
    try:
        with written_aside(path) as tmp, open(tmp, "wb") as fh:
            torch.save({"feats": feats.feats, "skipped": feats.skipped}, fh)
    except OSError as exc:
        log.warning("feature cache: could not write %s (%s)", path, exc)


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Remove ``cache_dir`` and its files (a finished sweep's); returns the bytes freed.

    >>> clear_cache("/nonexistent/.feature_cache")
    0
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in root.iterdir() if f.is_file())
    shutil.rmtree(root, ignore_errors=True)
    return freed
