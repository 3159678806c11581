"""Noise and room-impulse-response banks for augmentation: named in ``augment.noise_bank`` /
``augment.rir_bank`` as a prepared manifest, a folder of audio, or ``builtin`` (the synthetic
corpus's own banks, built once on demand, for any corpus). Checked before a sweep starts."""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pandas as pd

from speakertune.data import storage
from speakertune.data.audio import AUDIO_SUFFIXES
from speakertune.data.errors import ManifestError
from speakertune.data.paths import BUILTIN
from speakertune.data.readers import list_audio


class AugmentError(ValueError):
    """An augmentation option or bank is invalid; the message names the field or file."""


def needed_banks(aug: dict[str, Any]) -> list[str]:
    """Which banks the augmentation probabilities use: ``noise`` (noise, music, babble), ``rir``."""
    need = []
    if float(aug["noise_prob"]) > 0 or float(aug["babble_prob"]) > 0:
        need.append("noise")
    if float(aug["reverb_prob"]) > 0:
        need.append("rir")
    return need


def resolve_bank(
    aug: dict[str, Any], kind: str, own: pd.DataFrame | None, storage_options: dict | None = None
) -> pd.DataFrame | None:
    """The ``kind`` (``noise``/``rir``) bank: a named one, else ``builtin``: the corpus's own
    (``own``, the synthetic corpus) or the built-in banks under ``augment.builtin_banks_dir``."""
    name = aug[f"{kind}_bank"]
    if not name:
        return own
    if name != BUILTIN:
        return read_bank(name, storage_options)
    if own is not None:
        return own
    from speakertune.data.manifest import read_manifest
    from speakertune.data.synthetic import ensure_builtin_banks

    root = ensure_builtin_banks(aug["builtin_banks_dir"])
    return read_manifest(root / kind / "manifest.parquet")


def check_banks(cfg: dict[str, Any], where: str = "augment") -> None:
    """Before anything starts: a bank the augmentation uses must exist and hold audio
    (``builtin`` is built on demand). Raises ``AugmentError`` naming the key and the path."""
    aug = cfg["augment"]
    for kind in needed_banks(aug):
        name = aug[f"{kind}_bank"]
        if name == BUILTIN:
            continue
        if not name:
            raise AugmentError(f"{where}.{kind}_bank: augmentation needs a {kind} bank; name "
                               f"one or use 'builtin'")
        try:
            read_bank(name, (cfg.get("data") or {}).get("storage"))
        except AugmentError as exc:
            raise AugmentError(f"{where}.{kind}_bank: {exc}") from None


def read_bank(path: str, storage_options: dict | None = None) -> pd.DataFrame:
    """A noise or RIR bank as a DataFrame ``uri, category``.

    ``path`` is a manifest (``.parquet``/``.csv`` with a ``uri`` column; relative uris are taken
    relative to the manifest) or a directory searched recursively for audio files, whose first
    sub-folder names the category (MUSAN ``noise/ music/ speech/``; RIRS_NOISES sub-folders).
    """
    path = str(path)
    if path.lower().endswith((".parquet", ".csv")):
        return _bank_manifest(path, storage_options)
    try:
        found = list_audio(path, storage_options, "noise/RIR bank not found")
    except ManifestError as exc:
        raise AugmentError(str(exc)) from None
    if not found:
        raise AugmentError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in bank")
    return pd.DataFrame({"uri": [uri for _, uri in found],
                         "category": [rel.split("/")[0] if "/" in rel else "noise"
                                      for rel, _ in found]})  # fmt: skip


def _bank_manifest(path: str, storage_options: dict | None) -> pd.DataFrame:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not storage.exists(path, storage_options):
        raise AugmentError(f"{path}: noise/RIR bank not found")
    reader = pq.read_table if path.lower().endswith(".parquet") else pcsv.read_csv
    try:
        df = reader(io.BytesIO(storage.read_bytes(path, storage_options))).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad manifest
        raise AugmentError(f"{path}: cannot read bank manifest ({exc})") from None
    if "uri" not in df.columns:
        raise AugmentError(f"{path}: bank manifest has no 'uri' column")
    df["uri"] = [storage.resolve_uri(u, storage.dirname(path)) for u in df["uri"].astype(str)]
    if "category" not in df.columns:
        df["category"] = "noise"
    return df.reset_index(drop=True)


class BankCache:
    """Decoded bank audio by URI, least recently used evicted once over ``cap_mb`` megabytes.

    ``load(uri)`` decodes on a miss. An item larger than the cap alone is returned uncached.
    """

    def __init__(self, load: Callable[[str], Any], cap_mb: float) -> None:
        self.load = load
        self.cap = int(float(cap_mb) * 2**20)
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.nbytes = 0
        self.misses = 0

    @staticmethod
    def size(item: Any) -> int:
        return int(item.nbytes) if hasattr(item, "nbytes") else item.numel() * item.element_size()

    def __getitem__(self, uri: str) -> Any:
        if uri in self.items:
            self.items.move_to_end(uri)
            return self.items[uri]
        item = self.load(uri)
        self.misses += 1
        size = self.size(item)
        if size > self.cap:
            return item
        while self.nbytes + size > self.cap:
            self.nbytes -= self.size(self.items.popitem(last=False)[1])
        self.items[uri] = item
        self.nbytes += size
        return item
