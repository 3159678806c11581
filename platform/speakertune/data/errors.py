"""Project exceptions for the data layer: each message is one line naming file/line/field."""

from __future__ import annotations


class DataError(ValueError):
    """Base class: bad input data (the message names the file and, where known, the line)."""


class StorageError(DataError):
    """A URI cannot be opened or read (missing object, bad credentials, unknown scheme)."""


class AudioError(DataError):
    """Audio that cannot be used: missing, corrupt, empty or of an unsupported format."""


class ManifestError(DataError):
    """A manifest (or a corpus listing it is read from) is malformed."""


class TrialsError(DataError):
    """A trial list is malformed or names utterances that the corpus does not have."""
