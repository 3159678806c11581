"""Corpus manifests: one Parquet row per utterance.

Required columns: ``utt`` (unique id), ``spk``, ``uri``, ``duration_s``, ``sample_rate``;
extra columns (``category``, ``rt60``, ``label``...) are kept.

URI convention: on disk a ``uri`` is either absolute (local path or ``scheme://``) or
*relative to the manifest's own directory*. ``write_manifest`` stores audio that lives under
the manifest's directory as relative URIs, so a corpus directory can be moved or copied to
``s3://bucket/prefix/`` unchanged; ``read_manifest`` always returns absolute URIs resolved
against wherever the manifest was read from (local directory or object-store prefix).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from speakertune.data.errors import ManifestError, StorageError
from speakertune.data.storage import (
    dirname,
    has_scheme,
    read_bytes,
    resolve_uris,
    write_bytes,
)

REQUIRED = ("utt", "spk", "uri", "duration_s", "sample_rate")


def validate_manifest(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check columns, types and unique ids; return a cleaned copy. Errors name ``source``."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {missing}; have {list(df.columns)}")
    df = df.reset_index(drop=True).copy()
    for col in ("utt", "spk", "uri"):
        bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if bad.any():
            row = int(bad.idxmax())
            raise ManifestError(f"{source}: row {row + 1}: empty {col!r}")
        df[col] = df[col].astype(str)
    for col, kind in (("duration_s", float), ("sample_rate", int)):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values <= 0)
        if bad.any():
            row = int(bad.idxmax())
            raise ManifestError(
                f"{source}: row {row + 1} (utt {df.at[row, 'utt']!r}): "
                f"{col} must be a positive number, got {df.at[row, col]!r}"
            )
        df[col] = values.astype(kind)
    dup = df["utt"].duplicated()
    if dup.any():
        row = int(dup.idxmax())
        first = int((df["utt"] == df.at[row, "utt"]).idxmax())
        raise ManifestError(
            f"{source}: row {row + 1}: duplicate utt {df.at[row, 'utt']!r} "
            f"(first at row {first + 1})"
        )
    return df


def read_manifest(path: str | Path, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read and validate a Parquet manifest; ``uri`` values come back absolute."""
    path = str(path)
    try:
        data = read_bytes(path, storage_options)
    except StorageError as exc:
        raise ManifestError(str(exc)) from None
    try:
        df = pq.read_table(io.BytesIO(data)).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({exc})") from None
    df = validate_manifest(df, path)
    base = dirname(path)
    df["uri"] = resolve_uris(df["uri"], base)
    return df


def write_manifest(
    df: pd.DataFrame,
    path: str | Path,
    storage_options: dict[str, Any] | None = None,
    relative: bool = True,
) -> None:
    """Validate and write ``df``; with ``relative`` audio under the manifest's dir is stored
    relative to it (see the module docstring)."""
    path = str(path)
    df = validate_manifest(df, path)
    if relative and not has_scheme(path):
        base = os.path.dirname(os.path.abspath(path))
        df["uri"] = [_relative(u, base) for u in df["uri"]]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    write_bytes(path, sink.getvalue(), storage_options)


def _relative(uri: str, base: str) -> str:
    if has_scheme(uri):
        return uri
    full = os.path.abspath(uri)
    if os.path.commonpath([full, base]) != base:
        return full
    return Path(os.path.relpath(full, base)).as_posix()
