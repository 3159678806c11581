"""The recordings a command works through one by one (explain, diarize): a file that cannot be
read is skipped, counted and reported on stderr, never fatal; none readable is an error.

    >>> files = AudioFiles(["a.wav", "broken.wav"], load=lambda uri: read(uri))
    >>> for i, uri, wave in files: ...                      # broken.wav: skipped, reported
    >>> files.skipped                                        # {'broken.wav': 'why'}
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from speakertune.data.errors import AudioError


class AudioFiles:
    """Iterates ``(number, uri, load(uri))`` over ``uris``; ``skipped`` maps each unreadable
    uri to why (``errors`` are the exceptions that mean "unreadable")."""

    def __init__(self, uris: Sequence[str], load: Callable[[str], Any],
                 errors: tuple[type[BaseException], ...] = (AudioError,)) -> None:
        self.uris, self.load, self.errors = list(uris), load, errors
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.uris)

    def __iter__(self) -> Iterator[tuple[int, str, Any]]:
        for i, uri in enumerate(self.uris, 1):
            try:
                item = self.load(uri)
            except self.errors as exc:  # one bad file should not sink the batch: count, report
                self.skipped[str(uri)] = str(exc)
                print(f"[{i}/{len(self)}] skipped: {exc}", file=sys.stderr, flush=True)
                continue
            yield i, uri, item

    def check_any(self, error: type[Exception], what: str) -> None:
        """Raise ``error`` when every file was skipped (``what``: "recording", "utterance")."""
        if self.uris and len(self.skipped) == len(self.uris):
            raise error(f"no {what} could be read: " + next(iter(self.skipped.values())))
