"""Local and object-storage access through pyarrow filesystems.

URIs are local paths (absolute or relative to the cwd) or anything pyarrow understands
(``s3://bucket/key``, ``gs://``, ``hdfs://``). S3 settings come from the standard AWS
environment variables, overridden by an explicit ``storage_options`` dict.
"""

from __future__ import annotations

import functools
import os
import posixpath
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from speakertune.data.errors import StorageError

# storage_options keys that are passed to pyarrow.fs.S3FileSystem unchanged.
_S3_KEYS = ("endpoint_override", "access_key", "secret_key", "region", "scheme", "session_token")


def has_scheme(uri: str) -> bool:
    """True for ``scheme://...`` URIs (``file://`` included), False for plain paths."""
    head, sep, _ = str(uri).partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1  # "C://" style drive letters excluded


def s3_options(storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """S3FileSystem kwargs: AWS environment variables, then explicit options on top."""
    opts: dict[str, Any] = {}
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["access_key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret_key"] = env.get("AWS_SECRET_ACCESS_KEY", "")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_override"] = endpoint
    for key, value in (storage_options or {}).items():
        if key not in _S3_KEYS:
            raise StorageError(f"storage option {key!r} is not supported; known: {_S3_KEYS}")
        if value is not None:
            opts[key] = value
    # pyarrow wants host:port plus a separate scheme; accept a full URL as users write it.
    ep = opts.get("endpoint_override")
    if ep and "://" in ep:
        scheme, _, rest = ep.partition("://")
        opts["endpoint_override"] = rest.rstrip("/")
        opts.setdefault("scheme", scheme)
    return opts


def get_filesystem(
    uri: str | Path, storage_options: dict[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path inside it)`` for a local path or a pyarrow URI."""
    uri = str(uri)
    if not has_scheme(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, _, rest = uri.partition("://")
    if scheme == "s3":
        try:
            return _s3_filesystem(tuple(sorted(s3_options(storage_options).items()))), rest
        except (TypeError, ValueError, OSError) as exc:
            raise StorageError(f"{uri}: cannot set up S3 access ({exc})") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except (TypeError, ValueError, OSError) as exc:
        raise StorageError(f"{uri}: unsupported or invalid URI ({exc})") from None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(options: tuple[tuple[str, Any], ...]) -> pafs.S3FileSystem:
    # One client per set of options and process: a new client per file would pay client
    # set-up and a fresh connection for every utterance streamed.
    return pafs.S3FileSystem(**dict(options))


def read_bytes(uri: str | Path, storage_options: dict[str, Any] | None = None) -> bytes:
    """Read a whole file or object; errors name the URI and the reason."""
    fs, path = get_filesystem(uri, storage_options)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise StorageError(f"{uri}: is a directory, not a file") from None
    except OSError as exc:
        raise StorageError(f"{uri}: cannot read ({_one_line(exc)})") from None


def write_bytes(
    uri: str | Path, data: bytes, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a whole file or object (parent directories are created for local paths)."""
    fs, path = get_filesystem(uri, storage_options)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as exc:
        raise StorageError(f"{uri}: cannot write ({_one_line(exc)})") from None


def exists(uri: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_filesystem(uri, storage_options)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise StorageError(f"{uri}: cannot stat ({_one_line(exc)})") from None


def dirname(uri: str | Path) -> str:
    """The directory part of a path or URI (keeps the scheme)."""
    uri = str(uri)
    if has_scheme(uri):
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(uri))


def resolve_uri(uri: str, base: str) -> str:
    """Absolute URI for ``uri`` relative to the directory ``base`` (absolute URIs pass through)."""
    uri = str(uri)
    if has_scheme(uri) or os.path.isabs(uri):
        return uri
    if has_scheme(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return os.path.normpath(os.path.join(base, uri))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
