"""Speaker turns and the NIST RTTM file format that stores them.

One ``SPEAKER`` line per turn: ``SPEAKER file chan start dur <NA> <NA> speaker <NA> <NA>``.
Other line types (``SPKR-INFO``, ``LEXEME`` ...) carry no turns and are not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speakertune.data.storage import write_text


class RTTMError(ValueError):
    """An RTTM line is malformed; the message names the file and line."""


@dataclass(frozen=True, order=True)
class Turn:
    """One speaker talking in one file from ``start`` for ``duration`` seconds."""

    file: str
    start: float
    duration: float
    speaker: str

    @property
    def end(self) -> float:
        return self.start + self.duration


def _parse_line(fields: list[str], where: str) -> Turn:
    if len(fields) < 8:
        raise RTTMError(f"{where}: expected at least 8 fields, got {len(fields)}")
    try:
        start, duration = float(fields[3]), float(fields[4])
    except ValueError:
        raise RTTMError(
            f"{where}: start/duration must be numbers, got {fields[3]!r} {fields[4]!r}"
        ) from None
    if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
        raise RTTMError(f"{where}: start/duration must be finite and >= 0")
    return Turn(fields[1], start, duration, fields[7])


def read_rttm(path: str | Path) -> list[Turn]:
    """All ``SPEAKER`` turns of an RTTM file, in file order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise RTTMError(f"{path}: cannot read ({exc.strerror})") from None
    turns = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        if fields[0] != "SPEAKER":
            continue
        turns.append(_parse_line(fields, f"{path}:{lineno}"))
    return turns


def format_rttm(turns: Iterable[Turn]) -> str:
    return "".join(
        f"SPEAKER {t.file} 1 {t.start:.3f} {t.duration:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in turns
    )


def write_rttm(turns: Iterable[Turn], path: str | Path) -> Path:
    """Write turns sorted by file and start time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, format_rttm(sorted(turns, key=lambda t: (t.file, t.start, t.speaker))))
    return path
