"""Corpus readers: Kaldi data dirs, the VoxCeleb layout, plain CSV -> manifest (+ trials).

Each returns ``(manifest DataFrame, trials DataFrame or None)`` with absolute URIs.
Durations come from a CSV ``duration_s`` column when given, otherwise from the
audio headers (which also catches missing, corrupt and empty files up front).
Roots and list files may be local or in object storage (``s3://bucket/vox/wav``): listing
and reads go through ``data.storage``, and the manifest's URIs then point into the bucket.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from speakertune.data.audio import AUDIO_SUFFIXES, audio_info, load_audio
from speakertune.data.errors import AudioError, ManifestError, StorageError
from speakertune.data.manifest import validate_manifest, write_manifest
from speakertune.data.storage import (
    dirname,
    exists,
    has_scheme,
    join,
    list_files,
    read_text,
    resolve_uri,
    write_text,
)
from speakertune.data.summary import write_summary
from speakertune.data.trials import check_trials, read_trials, write_trials

Opts = dict[str, Any] | None  # storage_options (see data.storage)


def _read_text(path: str | Path, storage_options: Opts = None) -> str:
    try:
        return read_text(path, storage_options)
    except StorageError as exc:
        raise ManifestError(str(exc)) from None


def read_table(path: str | Path, min_fields: int, max_fields: int | None = None,
               storage_options: Opts = None) -> list[list[str]]:
    """Whitespace-separated Kaldi-style table; each row is returned with its line number
    appended. Errors name file and line."""
    rows = []
    text = _read_text(path, storage_options)
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_fields or (max_fields and len(parts) > max_fields):
            want = f"{min_fields}" if max_fields == min_fields else f">= {min_fields}"
            raise ManifestError(f"{path}:{n}: expected {want} fields, got {len(parts)}: {line!r}")
        rows.append([*parts, str(n)])
    return rows


def _unique_map(rows: list[list[str]], path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in rows:
        key, line = row[0], row[-1]
        if key in out:
            raise ManifestError(
                f"{path}:{line}: duplicate id {key!r} (first at line {out[key][-1]})"
            )
        out[key] = row[1:]
    return out


def probe_durations(
    df: pd.DataFrame,
    where: list[str],
    storage_options: dict[str, Any] | None = None,
    skipped: list[tuple[str, str]] | None = None,
    min_seconds: float = 0.0,
) -> pd.DataFrame:
    """Fill ``duration_s``/``sample_rate`` from audio headers (8 threads: object stores).

    A missing, corrupt, empty, truncated or too-short file raises ``AudioError`` naming
    ``where[i]`` (the file:line the row came from), or, when a ``skipped`` list is given, is
    appended to it as ``(where, reason)`` and dropped: Kaldi's skip-count-go-on for big corpora.
    """

    def one(i: int) -> tuple[float, int] | str:
        uri = df["uri"].iat[i]
        try:
            dur, sr = audio_info(uri, storage_options)
        except AudioError as exc:
            msg = str(exc)
        else:
            if dur >= min_seconds:
                return dur, sr
            msg = f"{uri}: too short ({dur:.2f} s < {min_seconds:g} s)"
        full = msg if msg.startswith(f"{where[i]}: ") else f"{where[i]}: {msg}"  # path once
        if skipped is None:
            raise AudioError(full)
        return full[len(where[i]) + 2 :]

    info = []
    with ThreadPoolExecutor(8) as pool, _progress(len(df), "audio headers") as tick:
        for item in pool.map(one, range(len(df))):
            info.append(item)
            tick()
    bad = [i for i, x in enumerate(info) if isinstance(x, str)]
    if skipped is not None:
        skipped.extend((where[i], info[i]) for i in bad)
    keep = [i for i, x in enumerate(info) if not isinstance(x, str)]
    df = df.iloc[keep].copy()
    df["duration_s"] = [info[i][0] for i in keep]
    df["sample_rate"] = [info[i][1] for i in keep]
    return df.reset_index(drop=True)


@contextmanager
def _progress(total: int, what: str, every_s: float = 5.0):
    """A progress line every few seconds for big corpora (count, rate, time left)."""
    state = {"n": 0, "last": time.monotonic()}
    start = state["last"]

    def tick() -> None:
        state["n"] += 1
        now = time.monotonic()
        if total >= 2000 and (now - state["last"] >= every_s or state["n"] == total):
            rate = state["n"] / max(now - start, 1e-9)
            left = (total - state["n"]) / max(rate, 1e-9)
            print(f"[prepare] {what}: {state['n']:,}/{total:,} ({rate:,.0f}/s, "
                  f"{left:,.0f} s left)", file=sys.stderr, flush=True)
            state["last"] = now

    yield tick


def _kaldi_speakers(d: str, opts: Opts) -> dict[str, str]:
    """utt -> speaker from ``utt2spk``, else ``spk2utt``."""
    if exists(join(d, "utt2spk"), opts):
        rows = _unique_map(read_table(join(d, "utt2spk"), 2, 2, opts), join(d, "utt2spk"))
        return {u: f[0] for u, f in rows.items()}
    if not exists(join(d, "spk2utt"), opts):
        raise ManifestError(f"{d}: neither utt2spk nor spk2utt found")
    utt2spk: dict[str, str] = {}
    for row in read_table(join(d, "spk2utt"), 2, None, opts):
        for u in row[1:-1]:
            if u in utt2spk:
                raise ManifestError(f"{join(d, 'spk2utt')}:{row[-1]}: utterance {u!r} "
                                    "listed twice")
            utt2spk[u] = row[0]
    return utt2spk


def _kaldi_records(d: str, wav: dict[str, list[str]], scp_path: str, opts: Opts) -> list[dict]:
    """One record per utterance: a ``segments`` row (with offset and length) or a recording."""
    if not exists(join(d, "segments"), opts):
        return [{"utt": utt, "uri": _abs(path, d), "line": f"{scp_path}:{line}"}
                for utt, (path, line) in wav.items()]  # fmt: skip
    seg_path, records = join(d, "segments"), []
    rows = _unique_map(read_table(seg_path, 4, 4, opts), seg_path)
    for seg, (rec, start, end, line) in rows.items():
        if rec not in wav:
            raise ManifestError(f"{seg_path}:{line}: recording {rec!r} not in wav.scp")
        try:
            t0, t1 = float(start), float(end)
        except ValueError:
            raise ManifestError(f"{seg_path}:{line}: start/end must be numbers") from None
        if not 0 <= t0 < t1:
            raise ManifestError(f"{seg_path}:{line}: need 0 <= start < end, got {t0} {t1}")
        records.append({"utt": seg, "uri": _abs(wav[rec][0], d), "offset_s": t0,
                        "duration_s": t1 - t0, "line": f"{seg_path}:{line}"})  # fmt: skip
    return records


def read_kaldi(
    data_dir: str | Path, skipped: list[tuple[str, str]] | None = None, min_seconds: float = 0.0,
    storage_options: Opts = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A Kaldi data dir (local or ``s3://``): ``wav.scp`` + ``utt2spk`` (or ``spk2utt``),
    optional ``segments`` and ``trials``. Durations always come from the audio headers (this
    validates the audio; ``skipped``: see ``probe_durations``). With ``segments`` rows carry
    ``offset_s`` (see ``materialize_segments``). Piped ``wav.scp`` commands are not supported;
    relative paths in ``wav.scp`` are relative to the data dir."""
    d, opts = str(data_dir), storage_options
    scp_path = join(d, "wav.scp")
    wav = _unique_map(read_table(scp_path, 2, None, opts), scp_path)
    for rec, fields in wav.items():
        if len(fields) != 2 or fields[0].endswith("|") or fields[-2].endswith("|"):
            raise ManifestError(
                f"{scp_path}:{fields[-1]}: {rec!r}: only plain paths are supported, not "
                "piped commands (convert the audio to wav/flac first)"
            )
    utt2spk = _kaldi_speakers(d, opts)
    records = _kaldi_records(d, wav, scp_path, opts)
    for r in records:
        if r["utt"] not in utt2spk:
            raise ManifestError(f"{r['line']}: utterance {r['utt']!r} has no speaker in utt2spk")
        r["spk"] = utt2spk[r["utt"]]
    df = pd.DataFrame(records).rename(columns={"duration_s": "seg_s"})
    listed = df["utt"].tolist()
    df = probe_durations(df, df["line"].tolist(), opts, skipped, min_seconds)
    if "seg_s" in df:
        too_long = df["seg_s"] + df["offset_s"] > df["duration_s"] + 0.01
        if too_long.any():
            i = int(np.flatnonzero(too_long.to_numpy())[0])
            raise ManifestError(
                f"{df['line'].iat[i]}: segment ends after its recording ({df['uri'].iat[i]})"
            )
        df["duration_s"] = df["seg_s"]
    cols = ["utt", "spk", "uri", "duration_s", "sample_rate"]
    df = validate_manifest(df[cols + (["offset_s"] if "offset_s" in df else [])], str(scp_path))
    trials_path = join(d, "trials") if exists(join(d, "trials"), opts) else None
    return df, _trials(trials_path, df["utt"], listed, skipped, opts)


def read_voxceleb(
    root: str | Path,
    trials_path: str | Path | None = None,
    skipped: list[tuple[str, str]] | None = None,
    min_seconds: float = 0.0,
    storage_options: Opts = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """VoxCeleb layout ``root/<spk>/<video>/<nnnnn>.wav`` (or .flac, .m4a), local or in object
    storage. Utterance ids are the paths relative to ``root`` (``id10270/x6uYqmx31kE/00001.wav``),
    which is what the official trial lists (``1 enroll test``) name."""
    root = str(root).rstrip("/") or "/"
    found = list_audio(root, storage_options, "VoxCeleb root directory not found")
    rel, files = zip(*[(r, u) for r, u in found if r.count("/") == 2]) if found else ((), ())
    if not files:
        raise ManifestError(f"{root}: no <speaker>/<video>/<utt>.wav|.flac|.m4a files found")
    rel, files = list(rel), list(files)
    parts = [r.split("/") for r in rel]
    df = pd.DataFrame(
        {"utt": rel, "spk": [p[0] for p in parts], "session": [p[1] for p in parts],
         "uri": files}
    )  # fmt: skip
    df = probe_durations(df, files, storage_options, skipped, min_seconds)
    df = validate_manifest(df, root)
    return df, _trials(trials_path, df["utt"], rel, skipped, storage_options)


def list_audio(root: str, storage_options: Opts, missing: str) -> list[tuple[str, str]]:
    """``(path relative to root, absolute URI)`` of every audio file under ``root``."""
    if not has_scheme(root):
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise ManifestError(f"{root}: {missing}")
    try:
        uris = list_files(root, storage_options)
    except StorageError as exc:  # "not found" in the reader's words; others (network) as they are
        text = str(exc)
        raise ManifestError(f"{root}: {missing}" if "directory not found" in text else text
                            ) from None
    n = len(root.rstrip("/")) + 1
    return [(u[n:], u) for u in uris if os.path.splitext(u)[1].lower() in AUDIO_SUFFIXES]


def read_csv(
    path: str | Path,
    trials_path: str | Path | None = None,
    skipped: list[tuple[str, str]] | None = None,
    min_seconds: float = 0.0,
    storage_options: Opts = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A CSV (local or ``s3://``) with header ``utt,spk,uri[,duration_s,sample_rate,...]``;
    relative URIs are relative to the CSV's directory. Missing durations are read from the
    audio headers."""
    path = str(path)
    text = _read_text(path, storage_options)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ManifestError(f"{path}: empty CSV (no header)")
    header = [h.strip() for h in rows[0]]
    for col in ("utt", "spk", "uri"):
        if col not in header:
            raise ManifestError(f"{path}:1: header lacks column {col!r}: {','.join(header)}")
    records, where = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ManifestError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
        rec = dict(zip(header, (c.strip() for c in row)))
        for col in ("utt", "spk", "uri"):
            if not rec[col]:
                raise ManifestError(f"{path}:{n}: empty {col!r}")
        rec["uri"] = _abs(rec["uri"], dirname(path))
        records.append(rec)
        where.append(f"{path}:{n}")
    if not records:
        raise ManifestError(f"{path}: no rows after the header")
    df = pd.DataFrame(records)
    seen: dict[str, str] = {}
    for utt, w in zip(df["utt"], where):
        if utt in seen:
            raise ManifestError(f"{w}: duplicate utt {utt!r} (first at {seen[utt]})")
        seen[utt] = w
    if "duration_s" in df and "sample_rate" in df:
        for col in ("duration_s", "sample_rate"):
            bad = pd.to_numeric(df[col], errors="coerce").isna()
            if bad.any():
                i = int(bad.to_numpy().argmax())
                raise ManifestError(f"{where[i]}: {col} is not a number: {df[col].iat[i]!r}")
    else:
        df = probe_durations(df, where, storage_options, skipped, min_seconds)
    listed = [r["utt"] for r in records]
    df = validate_manifest(df, path)
    return df, _trials(trials_path, df["utt"], listed, skipped, storage_options)


def _trials(
    path: str | Path | None, kept: pd.Series, listed: list[str], skipped: list | None,
    storage_options: Opts = None,
) -> pd.DataFrame | None:
    """Read a trial list checked against every listed utterance; trials that name a skipped
    file are dropped and counted (one ``skipped`` entry for the list)."""
    if path is None:
        return None
    trials = read_trials(path, known_utts=listed, storage_options=storage_options)
    keep = set(kept)
    ok = trials["enroll"].isin(keep) & trials["test"].isin(keep)
    if not ok.all() and skipped is not None:
        skipped.append((str(path), f"{int((~ok).sum())} trial(s) dropped: they name skipped files"))
    return trials[ok].reset_index(drop=True)


def materialize_segments(
    df: pd.DataFrame, out_dir: str | Path, storage_options: Opts = None
) -> pd.DataFrame:
    """Cut rows with ``offset_s`` (Kaldi ``segments``) into their own FLAC files under
    ``out_dir`` so every manifest row is a whole file."""
    if "offset_s" not in df:
        return df
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = df.copy()
    for i, row in enumerate(df.itertuples()):
        sr = int(row.sample_rate)
        wave = load_audio(row.uri, sr, storage_options)
        start = int(round(row.offset_s * sr))
        piece = wave[start : start + int(round(row.duration_s * sr))]
        target = out_dir / f"{row.utt.replace('/', '_')}.flac"
        sf.write(target, piece, sr, format="FLAC", subtype="PCM_16")
        df.at[df.index[i], "uri"] = str(target)
        df.at[df.index[i], "duration_s"] = len(piece) / sr
    return df.drop(columns=["offset_s"])


def write_corpus(
    df: pd.DataFrame,
    trials: pd.DataFrame | None,
    out_dir: str | Path,
    skipped: list[tuple[str, str]] | None = None,
) -> tuple[Path, Path | None]:
    """Write ``out_dir/manifest.parquet`` (+ ``out_dir/trials.txt``), a summary table and
    plot (``summary.md``, ``durations.png``) and ``skipped.tsv`` (where, reason) when files were
    skipped; returns the manifest and trials paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "skipped.tsv").unlink(missing_ok=True)  # never a stale list from an earlier run
    if skipped:
        lines = ["where\treason"] + [f"{w}\t{r}" for w, r in skipped]
        write_text(out_dir / "skipped.tsv", "\n".join(lines) + "\n")
    manifest = out_dir / "manifest.parquet"
    write_manifest(df, manifest)
    trials_out = None
    if trials is not None:
        check_trials(trials, df["utt"])
        trials_out = out_dir / "trials.txt"
        write_trials(trials, trials_out)
    else:  # an earlier corpus's list never stays beside this manifest
        (out_dir / "trials.txt").unlink(missing_ok=True)
    write_summary(df, trials, out_dir, title=out_dir.name)
    return manifest, trials_out


def _abs(uri: str, base: str | Path) -> str:
    base = str(base)
    return resolve_uri(uri, base if has_scheme(base) else os.path.abspath(base))
