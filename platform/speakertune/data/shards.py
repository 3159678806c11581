"""Sharded corpora: the audio of a manifest packed into large Parquet files for object storage.

An epoch over a per-file corpus in a bucket is one GET per utterance (VoxCeleb2: 1.09M); over
shards it is a few thousand large sequential reads. Layout of a shard directory (local or
``s3://``)::

    DIR/shards/shard-00000.parquet ...  columns utt, spk, session, duration_s, sample_rate,
                                        audio (FLAC bytes, 16-bit PCM, mono, the source's rate)
    DIR/index.parquet                   utt, spk, duration_s, shard (path under DIR): checks
                                        and counts without opening a shard

``DIR/shards`` is a plain Parquet dataset (``ray.data.read_parquet("DIR/shards")``,
``pyarrow.parquet.read_table``). Rows are written in a seeded random order, so every shard
mixes speakers. Training streams them (``data.shards: DIR`` beside ``data.manifest``, which
still decides the train/dev/test split) through ``frontend.stream``.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from speakertune.data.audio import AV_SUFFIXES, decode_audio
from speakertune.data.errors import AudioError, DataError, StorageError
from speakertune.data.storage import join, read_bytes, write_bytes

INDEX = "index.parquet"
DEFAULT_SHARD_MB = 256.0
COLUMNS = ("utt", "spk", "session", "duration_s", "sample_rate", "audio")
Opts = dict[str, Any] | None


@dataclass
class ShardSummary:
    """What ``write_shards`` wrote: shard URIs, rows, FLAC bytes, ``(uri, reason)`` skips."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def to_flac(data: bytes, name: str, sample_rate: int) -> tuple[bytes, int, int]:
    """One audio file's bytes -> ``(FLAC bytes, samples, rate)``, 16-bit mono at the source rate.

    Mono 16-bit FLAC is kept byte for byte; 16-bit WAV is re-encoded losslessly (the decoded
    samples are identical). Compressed formats (m4a) and float/24-bit audio are decoded and
    rounded to 16 bits. Raises ``AudioError`` naming ``name``.
    """
    if name.lower().endswith(AV_SUFFIXES):
        wave, sr = decode_audio(data, sample_rate, name), int(sample_rate)
        pcm = np.round(np.clip(wave, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    else:
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                if f.format == "FLAC" and f.subtype == "PCM_16" and f.channels == 1:
                    return data, int(f.frames), int(f.samplerate)
                sr, pcm = int(f.samplerate), f.read(dtype="int16", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
            raise AudioError(f"{name}: corrupt or unsupported audio ({exc})") from None
        if pcm.shape[1] > 1:  # mix down as decode_audio does
            pcm = np.round(pcm.mean(axis=1)).astype(np.int16)
        pcm = pcm.reshape(-1)
    if pcm.size == 0:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    out = io.BytesIO()
    sf.write(out, pcm, sr, format="FLAC", subtype="PCM_16")
    return out.getvalue(), int(pcm.size), sr


def write_shards(
    df: pd.DataFrame, out: str, storage_options: Opts = None, shard_mb: float = DEFAULT_SHARD_MB,
    seed: int = 0, workers: int = 8, skipped: list[tuple[str, str]] | None = None,
) -> ShardSummary:
    """Pack the audio of manifest ``df`` (absolute URIs) into Parquet shards of about
    ``shard_mb`` MB under ``out`` (local or ``s3://``), plus ``out/index.parquet``.

    Unreadable files raise ``AudioError``, or with a ``skipped`` list are appended to it as
    ``(uri, reason)`` and left out (also listed in the summary).
    """
    if shard_mb <= 0:
        raise DataError(f"shard size must be positive, got {shard_mb} MB")
    order = np.random.default_rng(seed).permutation(len(df))
    rows = df.iloc[order].reset_index(drop=True)
    target = int(shard_mb * 2**20)
    summary, index, pending, size = ShardSummary(), [], [], 0
    opts = storage_options

    def one(i: int) -> dict[str, Any] | tuple[str, str]:
        r = rows.iloc[i]
        try:
            data = read_bytes(r["uri"], opts)
            flac, n, sr = to_flac(data, str(r["uri"]), int(r["sample_rate"]))
        except (AudioError, StorageError) as exc:
            if skipped is None:
                raise AudioError(str(exc)) from None
            return str(r["uri"]), str(exc)
        return {"utt": str(r["utt"]), "spk": str(r["spk"]),
                "session": str(r["session"]) if "session" in r else "",
                "duration_s": n / sr, "sample_rate": sr, "audio": flac}  # fmt: skip

    def flush() -> None:
        nonlocal pending, size
        name = f"shards/shard-{len(summary.files):05d}.parquet"
        _write_table(pending, join(out, name), opts, size)
        index.extend({"utt": p["utt"], "spk": p["spk"], "duration_s": p["duration_s"],
                      "shard": name} for p in pending)  # fmt: skip
        summary.files.append(join(out, name))
        summary.rows += len(pending)
        summary.bytes += size
        pending, size = [], 0

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for item in pool.map(one, range(len(rows))):
            if isinstance(item, tuple):
                summary.skipped.append(item)
                continue
            pending.append(item)
            size += len(item["audio"])
            if size >= target:
                flush()
    if pending:
        flush()
    if not index:
        raise DataError(f"{out}: no readable audio to shard ({len(summary.skipped)} skipped)")
    if skipped is not None:
        skipped.extend(summary.skipped)
    _write_table(index, join(out, INDEX), opts, 0)
    return summary


def _write_table(rows: list[dict[str, Any]], uri: str, opts: Opts, nbytes: int) -> None:
    table = pa.Table.from_pylist(rows)
    # Row groups of ~32 MB: a reader streams a shard a group at a time.
    per_group = max(1, math.ceil(len(rows) * (32 * 2**20) / nbytes)) if nbytes else None
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=per_group, compression="none"
                   if "audio" in table.column_names else "snappy")  # FLAC is compressed already
    write_bytes(uri, sink.getvalue(), opts)


def read_index(shards: str, storage_options: Opts = None) -> pd.DataFrame:
    """``DIR/index.parquet`` of a shard directory; a missing index is a ``DataError``."""
    uri = join(shards, INDEX)
    try:
        data = read_bytes(uri, storage_options)
    except StorageError as exc:
        raise DataError(f"data.shards: {exc} (write shards with `speakertune prepare shard`)"
                        ) from None
    return pq.read_table(io.BytesIO(data)).to_pandas()


def read_shard(uri: str, storage_options: Opts = None) -> pd.DataFrame:
    """One whole shard as a DataFrame (``audio`` holds FLAC bytes)."""
    return pq.read_table(io.BytesIO(read_bytes(uri, storage_options))).to_pandas()


def decode_row(audio: bytes, sample_rate: int, name: str) -> np.ndarray:
    """A shard row's FLAC bytes -> float32 mono at ``sample_rate`` (as ``load_audio``)."""
    return decode_audio(bytes(audio), sample_rate, name)


# ----------------------------------------------------------------------- training stream
