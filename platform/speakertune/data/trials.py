"""Verification trial lists: one trial per line.

Two line formats are read (and may not be mixed within a file):
``enroll test label`` (label ``1``/``0`` or ``target``/``nontarget``), the project format that
``write_trials`` writes, and the VoxCeleb official ``label enroll test`` (label 1/0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.errors import StorageError, TrialsError
from speakertune.data.storage import read_bytes, write_bytes

_LABELS = {"1": 1, "0": 0, "target": 1, "nontarget": 0, "tgt": 1, "imp": 0}


def parse_trials(text: str, source: str) -> pd.DataFrame:
    """Parse trial-list text; errors name ``source`` and the line number."""
    rows: list[tuple[str, str, int]] = []
    lines: list[int] = []
    fmt = None
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3:
            raise TrialsError(
                f"{source}:{n}: expected 3 fields 'enroll test label', got {len(parts)}: {line!r}"
            )
        a, b, c = parts
        kind = "ETL" if c.lower() in _LABELS else "LET" if a in ("0", "1") else None
        if kind is None:
            raise TrialsError(
                f"{source}:{n}: no label (1/0/target/nontarget) in first or last field: {line!r}"
            )
        fmt = fmt or kind
        if kind != fmt:
            raise TrialsError(f"{source}:{n}: line format differs from the lines above: {line!r}")
        rows.append((a, b, _LABELS[c.lower()]) if kind == "ETL" else (b, c, int(a)))
        lines.append(n)
    if not rows:
        raise TrialsError(f"{source}: no trials found (empty list)")
    df = pd.DataFrame(rows, columns=["enroll", "test", "label"])
    df["label"] = df["label"].astype("int64")
    df.attrs["source"] = source
    df.attrs["lines"] = lines
    return df


def read_trials(
    path: str | Path,
    known_utts: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Read ``DataFrame[enroll, test, label]``; with ``known_utts`` every id is checked."""
    path = str(path)
    try:
        text = read_bytes(path, storage_options).decode("utf-8")
    except StorageError as exc:
        raise TrialsError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise TrialsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    df = parse_trials(text, path)
    if known_utts is not None:
        check_trials(df, known_utts, path)
    return df


def check_trials(df: pd.DataFrame, known_utts: Any, source: str | None = None) -> None:
    """Raise ``TrialsError`` naming the first trial (and line) with an unknown utterance."""
    known = set(known_utts)
    source = source or df.attrs.get("source", "trials")
    lines = df.attrs.get("lines")
    for i, (e, t) in enumerate(zip(df["enroll"], df["test"])):
        for uid in (e, t):
            if uid not in known:
                where = f"{source}:{lines[i]}" if lines else f"{source}: trial {i + 1}"
                raise TrialsError(f"{where}: unknown utterance {uid!r} (not in the manifest)")


def write_trials(
    df: pd.DataFrame, path: str | Path, storage_options: dict[str, Any] | None = None
) -> None:
    """Write ``enroll test label`` lines (label 1/0)."""
    text = "".join(f"{e} {t} {int(y)}\n" for e, t, y in zip(df["enroll"], df["test"], df["label"]))
    write_bytes(str(path), text.encode(), storage_options)
