"""Local and object-storage access through pyarrow filesystems.

URIs are local paths (absolute or relative to the cwd) or anything pyarrow understands
(``s3://bucket/key``, ``gs://``, ``hdfs://``). S3 settings come from the standard AWS
environment variables, overridden by an explicit ``storage_options`` dict.

Remote reads, writes and stats retry transient failures (connection refused/reset, timeouts,
HTTP 5xx/throttling) with capped exponential backoff, so that an object store restarting
mid-epoch costs a pause, not a failed trial; ``RETRY`` bounds how long. URIs that carry
credentials (``s3://KEY:SECRET@bucket/...``) are refused, and error text goes through
``speakertune.redact``, so a secret never reaches a log line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow.fs as pafs

from speakertune.data.errors import StorageError
from speakertune.redact import MASK, redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")

# storage_options keys that are passed to pyarrow.fs.S3FileSystem unchanged.
_S3_KEYS = ("endpoint_override", "access_key", "secret_key", "region", "scheme", "session_token")

# Substrings of pyarrow/AWS SDK error messages that mean "try again": the server is away or
# overloaded. Anything else (access denied, no such key, bad request) fails at once.
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|curlCode|Couldn't connect|Connection refused|Connection reset|"
    r"Broken pipe|timed out|Timeout|TIMEOUT|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTLING|"
    r"INTERNAL_FAILURE|REQUEST_TIME|(?:HTTP status|response code):? 5\d\d",
    re.IGNORECASE,
)


@dataclass
class RetryPolicy:
    """``attempts`` tries in all, sleeping ``base_delay * 2**i`` (capped at ``max_delay``)
    between them: the defaults wait up to ~40 s, longer than an S3 gateway restart."""

    attempts: int = 10
    base_delay: float = 0.25
    max_delay: float = 8.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        env = os.environ
        return cls(int(env.get("SPEAKERTUNE_IO_ATTEMPTS", cls.attempts)),
                   float(env.get("SPEAKERTUNE_IO_BASE_DELAY", cls.base_delay)),
                   float(env.get("SPEAKERTUNE_IO_MAX_DELAY", cls.max_delay)))  # fmt: skip

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2**attempt)


RETRY = RetryPolicy.from_env()


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: network trouble and server-side (5xx) failures."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return isinstance(exc, OSError) and _TRANSIENT.search(text) is not None


def with_retries(fs: pafs.FileSystem, uri: str, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (one whole remote operation), retrying transient errors per ``RETRY``.

    Local filesystems are not retried. After the last attempt the error is a one-line
    ``StorageError`` naming the URI, the attempts and the last reason.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        return fn()
    policy, start = RETRY, time.monotonic()
    for attempt in range(max(1, policy.attempts)):
        try:
            return fn()
        except OSError as exc:
            if not is_transient(exc):
                raise
            if attempt + 1 >= policy.attempts:
                took = time.monotonic() - start
                raise StorageError(
                    f"{safe_uri(uri)}: cannot {what} after {attempt + 1} attempts over "
                    f"{took:.1f}s ({_one_line(exc)})"
                ) from None
            pause = policy.delay(attempt)
            log.warning("%s: %s failed (%s); retry %d/%d in %.2fs", safe_uri(uri), what,
                        _one_line(exc)[:200], attempt + 1, policy.attempts - 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def safe_uri(uri: str | Path) -> str:
    """``uri`` with any credentials in it masked, for messages."""
    return redact_text(str(uri))


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
        if env.get("AWS_SESSION_TOKEN"):  # temporary (SSO / STS) credentials need all three
            opts["session_token"] = env["AWS_SESSION_TOKEN"]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_override"] = endpoint
    for key, value in (storage_options or {}).items():
        if key not in _S3_KEYS:
            raise StorageError(f"storage option {key!r} is not supported; known: {_S3_KEYS}")
        # A masked value comes from a config read back from a checkpoint: the real one is
        # not there, so the environment's credentials are used instead of sending "***".
        if value is not None and value != MASK:
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
    # A URI that redaction would alter (user[:secret]@..., token=...) carries credentials
    # into every message and log line that names the file: refuse it up front.
    if safe_uri(uri) != uri:
        raise StorageError(f"{safe_uri(uri)}: credentials inside a URI are not accepted; "
                           "use storage options or the AWS_* environment variables")
    if scheme == "s3":
        try:
            return _s3_filesystem(tuple(sorted(s3_options(storage_options).items()))), rest
        except (TypeError, ValueError, OSError) as exc:
            raise StorageError(f"{safe_uri(uri)}: cannot set up S3 access ({exc})") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except (TypeError, ValueError, OSError) as exc:
        raise StorageError(f"{safe_uri(uri)}: unsupported or invalid URI ({exc})") from None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(options: tuple[tuple[str, Any], ...]) -> pafs.S3FileSystem:
    # One client per set of options and process: a new client per file would pay client
    # set-up and a fresh connection for every utterance streamed.
    return pafs.S3FileSystem(**dict(options))


def read_bytes(uri: str | Path, storage_options: dict[str, Any] | None = None) -> bytes:
    """Read a whole file or object; errors name the URI and the reason."""
    fs, path = get_filesystem(uri, storage_options)

    def read() -> bytes:
        # A random-access file knows its size, so read() is one ranged GET; a stream reads
        # in 256 KB chunks, one GET each (32 requests for an 8 MB shard).
        with fs.open_input_file(path) as f:
            return f.read()

    try:
        return with_retries(fs, str(uri), "read", read)
    except FileNotFoundError:
        raise StorageError(f"{safe_uri(uri)}: file not found") from None
    except IsADirectoryError:
        raise StorageError(f"{safe_uri(uri)}: is a directory, not a file") from None
    except StorageError:  # already one line naming the uri (retries exhausted)
        raise
    except (OSError, ValueError) as exc:  # pyarrow reports a malformed path as ArrowInvalid
        raise StorageError(f"{safe_uri(uri)}: cannot read ({_one_line(exc)})") from None


@contextlib.contextmanager
def written_aside(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of the local file ``path`` (same suffix) to write into, renamed onto
    ``path`` when the block ends and removed if it raises: a crash or a full disk leaves the
    previous file intact, and no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(uri: str | Path, text: str, storage_options: dict[str, Any] | None = None) -> None:
    """``write_bytes`` of UTF-8 ``text``: atomic, local or remote."""
    write_bytes(uri, text.encode("utf-8"), storage_options)


def write_bytes(
    uri: str | Path, data: bytes, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a whole file or object: a reader sees the old content or the new, never part of
    either (a local file is written aside and renamed into place; an object PUT replaces the
    object whole). Parent directories are created for local paths."""
    fs, path = get_filesystem(uri, storage_options)

    def write() -> None:  # a whole-object PUT: safe to repeat
        with fs.open_output_stream(path) as f:
            f.write(data)

    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with written_aside(path) as tmp:
                tmp.write_bytes(data)
            return
        with_retries(fs, str(uri), "write", write)
    except StorageError:  # already one line naming the uri (retries exhausted)
        raise
    except (OSError, ValueError) as exc:
        raise StorageError(f"{safe_uri(uri)}: cannot write ({_one_line(exc)})") from None


def exists(uri: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_filesystem(uri, storage_options)
    try:
        info = with_retries(fs, str(uri), "stat", lambda: fs.get_file_info(path))
    except StorageError:  # already one line naming the uri (retries exhausted)
        raise
    except (OSError, ValueError) as exc:
        raise StorageError(f"{safe_uri(uri)}: cannot stat ({_one_line(exc)})") from None
    return info.type != pafs.FileType.NotFound


def list_files(uri: str | Path, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every file under the directory or prefix ``uri`` (recursive, sorted), as URIs of the
    same kind (plain paths for local directories). A missing directory raises ``StorageError``."""
    uri = str(uri)
    fs, root = get_filesystem(uri, storage_options)
    root = root.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=False)
    try:
        infos = with_retries(fs, uri, "list", lambda: fs.get_file_info(selector))
    except FileNotFoundError:
        raise StorageError(f"{safe_uri(uri)}: directory not found") from None
    except StorageError:
        raise
    except (OSError, ValueError) as exc:
        raise StorageError(f"{safe_uri(uri)}: cannot list ({_one_line(exc)})") from None
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    if not files and not isinstance(fs, pafs.LocalFileSystem):
        # An object store has no directories: an empty listing of a missing prefix is the
        # same "not found" a local path gets.
        raise StorageError(f"{safe_uri(uri)}: directory not found (no objects under it)")
    base = uri.rstrip("/")
    return [base + p[len(root):] for p in files]


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (the scheme is kept)."""
    base = str(base)
    if has_scheme(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def append_text(uri: str, text: str) -> None:
    """Append ``text`` to a local file, or rewrite an object with ``text`` added."""
    if not has_scheme(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with open(uri, "a") as fh:
            fh.write(text)
        return
    old = read_bytes(uri) if exists(uri) else b""
    write_bytes(uri, old + text.encode())


def copy_tree(src: str | Path, dest: str | Path,
              storage_options: dict[str, Any] | None = None,
              complete: Callable[[Path], None] | None = None) -> Path:
    """Copy the folder ``src`` (local or URI) to the local folder ``dest``: into a temporary
    sibling first, completed there by ``complete(staged)`` (files added beside the copy), then
    swapped into place, so a copy that fails leaves ``dest`` as it was."""
    tmp = staging_dir(dest)
    try:
        fs, path = get_filesystem(src, storage_options)
        with_retries(fs, str(src), "copy", lambda: pafs.copy_files(
            path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()))
        if complete is not None:
            complete(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return swap_into_place(tmp, dest)


def staging_dir(dest: str | Path) -> Path:
    """A new empty hidden sibling of the folder ``dest`` to build it in (``swap_into_place``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))


def swap_into_place(staged: Path, dest: str | Path) -> Path:
    """Replace the folder ``dest`` with ``staged`` (its sibling, built completely): two renames,
    so at any moment ``dest`` is the old folder or the new one, never a mix."""
    dest = Path(dest)
    old = dest.with_name(f".{dest.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staged.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def read_text(uri: str | Path, storage_options: dict[str, Any] | None = None) -> str:
    """A UTF-8 text file (local or remote); errors name the URI."""
    data = read_bytes(uri, storage_options)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(f"{safe_uri(uri)}: not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start})") from None


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


def resolve_uris(uris: pd.Series, base: str) -> pd.Series:
    """``resolve_uri`` over a manifest column, vectorised: absolute URIs pass through and
    plain relative paths are joined by string concatenation (1M rows in about a second); only
    paths with ``.``/``..`` segments take the per-row route."""
    uris = uris.astype(str)
    absolute = uris.str.match(r"^[A-Za-z0-9][A-Za-z0-9+.-]+://") | uris.str.startswith("/")
    if absolute.all():
        return uris
    out = uris.copy()
    rel = uris[~absolute]
    simple = ~rel.str.contains(r"(?:^|/)\.{1,2}(?:/|$)", regex=True)
    prefix = base.rstrip("/") + "/"
    out[rel.index[simple.to_numpy()]] = prefix + rel[simple]
    odd = rel[~simple]
    out[odd.index] = [resolve_uri(u, base) for u in odd]
    return out


def _one_line(exc: BaseException) -> str:
    return redact_text(" ".join(str(exc).split()))
