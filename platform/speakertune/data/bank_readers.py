"""Noise and room-impulse-response banks from their public layouts (MUSAN, RIRS_NOISES) ->
bank manifests (``utt, spk, category, uri``) for augmentation, with durations from the audio
headers (unreadable files skipped and listed, like the corpus readers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.errors import ManifestError
from speakertune.data.manifest import validate_manifest
from speakertune.data.readers import list_audio, probe_durations


def read_musan(
    root: str | Path, skipped: list[tuple[str, str]] | None = None
) -> tuple[pd.DataFrame, None]:
    """MUSAN (``root/{music,speech,noise}/<source>/<file>.wav``) as a noise bank manifest:
    ``category`` (and ``spk``) is the top folder; ``speech`` is what babble mixes."""
    return _bank(root, lambda rel: rel.split("/")[0] if rel.split("/")[0] in
                 ("music", "speech", "noise") else None, skipped), None


def read_rirs(
    root: str | Path, skipped: list[tuple[str, str]] | None = None
) -> tuple[pd.DataFrame, None]:
    """RIRS_NOISES as an RIR bank: ``simulated_rirs/<room size>/Room*/*.wav`` (category = the
    room size) and the real RIRs of ``real_rirs_isotropic_noises`` (files named ``*rir*``; the
    isotropic noise recordings beside them are not impulse responses and are left out)."""

    def category(rel: str) -> str | None:
        parts = rel.split("/")
        if parts[0] == "simulated_rirs" and len(parts) > 2:
            return parts[1]
        if parts[0] == "real_rirs_isotropic_noises" and "rir" in parts[-1].lower():
            return "real"
        return None

    return _bank(root, category, skipped), None


def _bank(root: str | Path, category: Any, skipped: list | None) -> pd.DataFrame:
    root = str(root).rstrip("/") or "/"
    rows = []
    for rel, uri in list_audio(root, None, "directory not found"):
        cat = category(rel)
        if cat:
            rows.append({"utt": rel, "spk": cat, "category": cat, "uri": uri})
    if not rows:
        raise ManifestError(f"{root}: no audio files in the expected layout (see datasets/)")
    df = pd.DataFrame(rows)
    df = probe_durations(df, df["uri"].tolist(), skipped=skipped)
    return validate_manifest(df, root)
