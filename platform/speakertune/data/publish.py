"""Publish a locally prepared corpus to object storage with its manifests' URIs rewritten.

    publish_corpus("data/vox1", "s3://bucket/vox1")

Every file under the corpus directory is uploaded to the same relative key (trials, summaries,
shards, segments). Every manifest (a ``*.parquet`` with the manifest columns, nested ones such
as ``noise/manifest.parquet`` included) is rewritten so each local audio file it names points at
its uploaded copy: audio inside the directory keeps its relative key, audio outside it (a
VoxCeleb tree prepared in place) goes under ``PREFIX/audio/`` by its path relative to the
common root of those files. URIs that are already remote are left as they are. Nobody edits a
manifest by hand, and the published manifest reads back with ``data.manifest: s3://...``.

What is never uploaded: a symlink that leads out of the corpus directory (skipped and counted:
a link to a credentials file must not reach a bucket), and a file a manifest names that is not
audio by its suffix (refused before anything is uploaded). The manifests are written last, so
a reader sees the old corpus or the new one, never a mix. A destination that already holds a
manifest is refused unless ``overwrite``; the new version's files then go under a fresh
``PREFIX/v<UTC time>/`` so the old manifest's files are never changed under its readers, and
the top-level manifests are swapped to the new version at the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.audio import AUDIO_SUFFIXES
from speakertune.data.errors import DataError, ManifestError
from speakertune.data.manifest import read_manifest, write_manifest
from speakertune.data.storage import exists, has_scheme, join, read_bytes, write_bytes

Opts = dict[str, Any] | None
log = logging.getLogger(__name__)


@dataclass
class Published:
    """What ``publish_corpus`` uploaded: manifest URIs, file and byte counts."""

    manifests: list[str]
    files: int
    bytes: int
    skipped: list[str]  # symlinks out of the corpus directory, not uploaded
    version: str = ""  # "v<UTC time>/" when an existing corpus was replaced


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
    """Local audio path -> destination URI for every local file the manifests name; a file
    that is not audio by its suffix is refused, naming the manifest."""
    for rel, df in manifests.items():
        for u in df["uri"]:
            if not has_scheme(u) and not all(
                    str(q).lower().endswith(AUDIO_SUFFIXES) for q in (u, Path(u).resolve())):
                raise DataError(f"{root / rel}: names {u}, which is not an audio file "
                                f"({', '.join(AUDIO_SUFFIXES)}); nothing was uploaded")
    local = sorted({u for df in manifests.values() for u in df["uri"] if not has_scheme(u)})
    inside = {u: Path(u).relative_to(root).as_posix() for u in local
              if os.path.commonpath([u, str(root)]) == str(root)}  # fmt: skip
    outside = [u for u in local if u not in inside]
    common = os.path.commonpath([os.path.dirname(u) for u in outside]) if outside else ""
    keys = {**inside, **{u: "audio/" + Path(os.path.relpath(u, common)).as_posix()
                         for u in outside}}  # fmt: skip
    return {u: join(dest, k) for u, k in keys.items()}


def _corpus_files(root: Path, manifests: dict[str, pd.DataFrame]) -> tuple[list[Path], list[str]]:
    """The files under ``root`` to upload as they are, and the symlinks skipped because they
    lead out of it."""
    files, skipped = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in manifests or not p.is_file():
            continue
        if os.path.commonpath([str(p.resolve()), str(root)]) != str(root):  # a link out
            skipped.append(rel)
            continue
        files.append(p)
    return files, skipped


def publish_corpus(
    corpus_dir: str | Path, dest: str, storage_options: Opts = None, workers: int = 16,
    overwrite: bool = False,
) -> Published:
    """Upload ``corpus_dir`` (with a ``manifest.parquet``) to ``dest`` (``s3://bucket/prefix``)
    and write its manifests there, last, with URIs pointing at the uploaded audio."""
    root = Path(corpus_dir).resolve()
    if not has_scheme(dest):
        raise DataError(f"{dest}: the destination must be an object-store URI (s3://bucket/prefix)")
    if not (root / "manifest.parquet").is_file():
        raise DataError(f"{root}: not a prepared corpus (no manifest.parquet)")
    dest = dest.rstrip("/")
    version = ""
    if exists(join(dest, "manifest.parquet"), storage_options):
        if not overwrite:
            raise DataError(f"{dest}: already holds a published corpus (manifest.parquet); "
                            "pass --overwrite to publish a new version beside it")
        version = f"v{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    payload = join(dest, version) if version else dest
    manifests = _manifests(root)
    targets = _targets(root, manifests, payload)
    files, skipped = _corpus_files(root, manifests)
    for rel in skipped:
        log.warning("%s: a symlink out of the corpus directory, not uploaded", root / rel)
    copies = {str(p): join(payload, p.relative_to(root).as_posix()) for p in files}
    copies.update(targets)
    if version:  # the top-level small files (trials, summaries) follow the new manifests
        copies.update({str(p): join(dest, p.name) for p in files if p.parent == root})

    def upload(item: tuple[str, str]) -> int:
        data = read_bytes(item[0])
        write_bytes(item[1], data, storage_options)
        return len(data)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = list(pool.map(upload, copies.items()))
    written = []
    for rel, df in manifests.items():  # last: the swap readers see
        df = df.assign(uri=[targets.get(u, u) for u in df["uri"]])
        uri = join(dest, rel)
        write_manifest(df, uri, storage_options, relative=False)
        written.append(uri)
    return Published(written, len(copies) + len(written), sum(sizes), skipped,
                     version and f"{version}/")
