"""The local paths of a trial config, and the one rule that makes them absolute.

Why trials need absolute paths: Ray runs every trial actor, Train worker and Ray Data task in a
working directory of its own (a session folder, or a submitted job's unpacked copy), so a path
the user wrote relative to where they typed the command would be looked up in the wrong place.
The driver resolves every local path against its own working directory once, before any trial
starts; URIs (``s3://...``) and the names that are not paths (``builtin`` banks) stay as they are.

    >>> absolute_paths({"data": {"root": "data/synth"}, "augment": {"noise_bank": "builtin"}},
    ...                Path("/home/me"))
    {'data': {'root': '/home/me/data/synth'}, 'augment': {'noise_bank': 'builtin'}}
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from speakertune.data.storage import has_scheme

# A bank named ``builtin`` is built on demand (``frontend.banks``): a name, never a path.
BUILTIN = "builtin"
NOT_PATHS: frozenset[str] = frozenset({BUILTIN})

# Dotted keys whose value is a local path or a URI (``data.test`` entries are walked apart).
PATH_KEYS = (
    "data.root", "data.manifest", "data.dev_trials", "data.shards",
    "augment.noise_bank", "augment.rir_bank", "trainer.init_checkpoint",
)  # fmt: skip
TEST_PATH_KEYS = ("trials", "manifest")


def is_local_path(value: Any) -> bool:
    """A non-empty string that is neither a URI nor a name such as ``builtin``."""
    return (isinstance(value, str) and bool(value) and not has_scheme(value)
            and value not in NOT_PATHS)  # fmt: skip


def _slots(cfg: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(dotted key, parent mapping, field)`` of every path-valued field present in ``cfg``
    (partial configs too); a ``data.test`` entry given as a bare string becomes ``{trials:}``."""
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        node = cfg.get(section)
        if isinstance(node, dict) and key in node:
            yield dotted, node, key
    data = cfg.get("data")
    tests = data.get("test") if isinstance(data, dict) else None
    for name, spec in list(tests.items()) if isinstance(tests, dict) else []:
        if isinstance(spec, str):
            tests[name] = spec = {"trials": spec}
        for key in TEST_PATH_KEYS:
            if isinstance(spec, dict) and key in spec:
                yield f"data.test.{name}.{key}", spec, key


def local_paths(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every local path that ``cfg`` reads (``data.root`` only for
    the synthetic corpus, which is built there)."""
    synthetic = (cfg.get("data") or {}).get("corpus", "synthetic") == "synthetic"
    return [(k, node[f]) for k, node, f in _slots(cfg)
            if is_local_path(node[f]) and (k != "data.root" or synthetic)]


def absolute_paths(cfg: dict[str, Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """``cfg`` (changed in place, and returned) with every local path made absolute against
    ``cwd`` (default: this process's working directory) and ``~`` expanded."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    for _, node, key in _slots(cfg):
        value = node[key]
        if is_local_path(value):
            node[key] = str((base / os.path.expanduser(value)).resolve())
    return cfg
