"""Publish a locally prepared corpus to object storage with its manifests' URIs rewritten.

    publish_corpus("data/vox1", "s3://bucket/vox1")

Every file under the corpus directory is uploaded to the same relative key (trials, summaries,
shards, segments). Every manifest (a ``*.parquet`` with the manifest columns, nested ones such
as ``noise/manifest.parquet`` included) is rewritten so each local audio file it names points at
its uploaded copy: audio inside the directory keeps its relative key, audio outside it (a
VoxCeleb tree prepared in place) goes under ``PREFIX/audio/`` by its path relative to the
common root of those files. URIs that are already remote are left as they are. Nobody edits a
manifest by hand, and the published manifest reads back with ``data.manifest: s3://...``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.errors import DataError, ManifestError
from speakertune.data.manifest import read_manifest, write_manifest
from speakertune.data.storage import has_scheme, join, read_bytes, write_bytes

Opts = dict[str, Any] | None


@dataclass
class Published:
    """What ``publish_corpus`` uploaded: manifest URIs, file and byte counts."""

    manifests: list[str]
    files: int
    bytes: int


def _manifests(root: Path) -> dict[str, pd.DataFrame]:
    """Relative path -> manifest (absolute URIs) for every manifest Parquet under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.parquet")):
        try:
            out[path.relative_to(root).as_posix()] = read_manifest(path)
        except ManifestError:  # shards, their index, other tables: copied unchanged
            continue
    return out


def _targets(root: Path, manifests: dict[str, pd.DataFrame], dest: str) -> dict[str, str]:
    """Local audio path -> destination URI for every local file the manifests name."""
    local = sorted({u for df in manifests.values() for u in df["uri"] if not has_scheme(u)})
    inside = {u: Path(u).relative_to(root).as_posix() for u in local
              if os.path.commonpath([u, str(root)]) == str(root)}  # fmt: skip
    outside = [u for u in local if u not in inside]
    common = os.path.commonpath([os.path.dirname(u) for u in outside]) if outside else ""
    keys = {**inside, **{u: "audio/" + Path(os.path.relpath(u, common)).as_posix()
                         for u in outside}}  # fmt: skip
    return {u: join(dest, k) for u, k in keys.items()}


def publish_corpus(
    corpus_dir: str | Path, dest: str, storage_options: Opts = None, workers: int = 16
) -> Published:
    """Upload ``corpus_dir`` (with a ``manifest.parquet``) to ``dest`` (``s3://bucket/prefix``)
    and write its manifests there with URIs pointing at the uploaded audio."""
    root = Path(corpus_dir).resolve()
    if not has_scheme(dest):
        raise DataError(f"{dest}: the destination must be an object-store URI (s3://bucket/prefix)")
    if not (root / "manifest.parquet").is_file():
        raise DataError(f"{root}: not a prepared corpus (no manifest.parquet)")
    manifests = _manifests(root)
    targets = _targets(root, manifests, dest.rstrip("/"))
    copies = {str(p): join(dest, p.relative_to(root).as_posix()) for p in root.rglob("*")
              if p.is_file() and p.relative_to(root).as_posix() not in manifests}  # fmt: skip
    copies.update(targets)

    def upload(item: tuple[str, str]) -> int:
        data = read_bytes(item[0])
        write_bytes(item[1], data, storage_options)
        return len(data)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = list(pool.map(upload, copies.items()))
    written = []
    for rel, df in manifests.items():
        df = df.assign(uri=[targets.get(u, u) for u in df["uri"]])
        uri = join(dest, rel)
        write_manifest(df, uri, storage_options, relative=False)
        written.append(uri)
    return Published(written, len(copies) + len(written), sum(sizes))
