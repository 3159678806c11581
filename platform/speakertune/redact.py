"""Credential scrubbing for configs, free text and log records.

Anything that leaves the process (checkpoint ``config.yaml``, leaderboard params, logs, error
messages) goes through here so that S3 keys and tokens are never written down. Three layers:
secret-looking *keys* in nested configs, secret-looking *patterns* in text (URI user info,
``NAME=value`` assignments, signed-URL query parameters) and *known values* (registered
secrets and the AWS secret environment variables), which catch a secret wherever it turns up.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"

# Key names (case-insensitive, whole name) whose values are credentials.
_SECRET_KEY = re.compile(
    r"(?:^|[_.-])(?:secret|secrets|password|passwd|pwd|token|credentials?|api[_-]?key|"
    r"access[_-]?key(?:[_-]?id)?|private[_-]?key|session[_-]?token|authorization|signature)$"
    r"|^(?:secret|password|token)[_.-]",
    re.IGNORECASE,
)
_PCT = re.compile(r"%[0-9A-F]{2}")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # SecretAccessKey -> Secret_Access_Key
# Environment variables whose values are secrets even where no key name is around them.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
               "GOOGLE_APPLICATION_CREDENTIALS_JSON", "AZURE_STORAGE_KEY")  # fmt: skip
_MIN_KNOWN = 6  # shorter "secrets" would mask ordinary words

# user[:password]@ after a scheme; AWS secrets may hold a raw "/", so after the colon it is allowed.
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/\s@:'\"]+(?::[^\s@'\"]+)?)@"
)
# NAME=value / NAME: value / "NAME": "value" where NAME looks secret (env dumps, reprs, YAML).
_ASSIGN = re.compile(
    r"(?P<key>[\"']?\b[A-Za-z0-9_.-]*(?:secret|password|passwd|token|credential|api[_-]?key|"
    r"access[_-]?key|private[_-]?key|signature)[A-Za-z0-9_]*[\"']?)"
    r"(?P<sep>\s*[=:]\s*)(?P<q>[\"']?)(?P<val>[^\s\"',;&)}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<p>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)

_known: set[str] = set()


def is_secret_key(key: object) -> bool:
    """True for config keys that hold credentials (``secret_key``, ``aws_session_token``...)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(_CAMEL.sub("_", key)))


def register_secret(*values: object) -> None:
    """Remember secret values so that ``redact_text`` masks them wherever they appear."""
    for v in values:
        if isinstance(v, str) and len(v) >= _MIN_KNOWN and v != MASK:
            _known.add(v)


def secrets_in(obj: Any) -> list[str]:
    """The values of secret-looking keys in a nested config (for ``register_secret``)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str):
                found.append(v)
            else:
                found += secrets_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += secrets_in(v)
    return found


def _known_values() -> list[str]:
    env = [os.environ.get(name, "") for name in _SECRET_ENV]
    vals = _known | {v for v in env if len(v) >= _MIN_KNOWN}
    # a secret in a URL or a form body is percent-encoded ("/" -> %2F, "+" -> %2B or "+")
    vals |= {enc(v, safe="") for v in vals for enc in (quote, quote_plus)}
    vals |= {_PCT.sub(lambda m: m[0].lower(), v) for v in vals if "%" in v}  # %2f and %2F
    return sorted(vals, key=len, reverse=True)  # longest first: no half-masked overlaps


def redact_text(text: str) -> str:
    """``text`` with credentials masked: URI user info, secret assignments, known values."""
    if not text:
        return text
    for value in _known_values():
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _ASSIGN.sub(lambda m: f"{m['key']}{m['sep']}{m['q']}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m['p']}{MASK}", text)


def redact_config(obj: Any) -> Any:
    """A copy of a nested config with secret-key values masked and strings scrubbed.

    The values found are also registered, so later log lines that quote them are masked.
    """
    register_secret(*secrets_in(obj))
    return _redact(obj)


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else _redact(v))
                for k, v in obj.items()}  # fmt: skip
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def split_secrets(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options with secret-key values masked, those values)``.

    >>> split_secrets({"region": "eu-west-1", "secret_key": "abc123"})
    ({'region': 'eu-west-1', 'secret_key': '***'}, {'secret_key': 'abc123'})
    """
    public, secret = {}, {}
    for k, v in (options or {}).items():
        if is_secret_key(k) and v not in (None, "", MASK):
            public[k], secret[k] = MASK, v
        else:
            public[k] = v
    return public, secret


def without_masked(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` minus masked values, so a config read back from a checkpoint falls back to
    credentials from the environment instead of sending ``***`` as a key."""
    return {k: v for k, v in (options or {}).items() if v != MASK}


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs each record's message, arguments and traceback text.

    Attach it to *handlers* (``install``): a logger's own filters do not see records that
    propagate up from child loggers, a handler's filters see all of them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: scrub what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
            record.exc_info = None  # the handler would otherwise format the raw traceback again
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> RedactingFilter:
    """Add one ``RedactingFilter`` to ``handlers`` (default: every root-logger handler)."""
    flt = RedactingFilter()
    for h in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(flt)
    return flt
