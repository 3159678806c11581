"""Embedding extraction for evaluation: audio -> evaluation features -> encoder, batched.

Utterances are sorted by length and batched with neighbours of similar length; a batch is
cropped to its shortest member, which costs at most ``crop_tolerance`` of any utterance's
frames (10% by default) and lets one forward pass serve many utterances.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import torch

log = logging.getLogger(__name__)
_BLOCK = 512  # utterances whose features are held in memory at once


class EmbeddingError(ValueError):
    """Embedding extraction could not run (bad table, nothing decodable)."""


class Embeddings(dict):
    """``utt -> ndarray[D]``; ``skipped`` maps each utterance that failed to its reason."""

    def __init__(self, *args: Any, skipped: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.skipped: dict[str, str] = dict(skipped or {})


def _features(row: Any, cfg: dict[str, Any], max_frames: int | None,
              storage_options: dict[str, Any] | None) -> torch.Tensor:
    from speakertune.data.audio import load_audio
    from speakertune.frontend.pipeline import extract_features

    sr = int(cfg.get("data", {}).get("sample_rate", 16000))
    wave = load_audio(row.uri, sr, storage_options)
    feats = torch.as_tensor(extract_features(wave, cfg, str(row.uri)), dtype=torch.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{row.uri}: no feature frames (audio too short?)")
    return feats[:max_frames] if max_frames else feats


def _batches(items: list[tuple[str, torch.Tensor]], batch_size: int,
             tolerance: float) -> Iterator[tuple[list[str], torch.Tensor]]:
    items.sort(key=lambda kv: kv[1].shape[0])
    i = 0
    while i < len(items):
        shortest = items[i][1].shape[0]
        j = i + 1
        while (j < len(items) and j - i < batch_size
               and items[j][1].shape[0] <= shortest * (1.0 + tolerance)):
            j += 1
        chunk = items[i:j]
        yield [u for u, _ in chunk], torch.stack([f[:shortest] for _, f in chunk])
        i = j


def embed_utterances(
    encoder: torch.nn.Module,
    df: pd.DataFrame,
    cfg: dict[str, Any],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
    crop_tolerance: float = 0.1,
    load_workers: int = 2,
) -> Embeddings:
    """Embed every row of ``df`` (columns ``utt``, ``uri``). Undecodable utterances are
    skipped, counted in ``result.skipped`` and logged; if none succeeds it raises."""
    for col in ("utt", "uri"):
        if col not in df.columns:
            raise EmbeddingError(f"embed_utterances: table has no column {col!r}")
    shift_ms = float(cfg.get("features", {}).get("frame_shift", 10.0))
    max_frames = int(max_seconds * 1000 / shift_ms) if max_seconds else None
    if storage_options is None:
        storage_options = cfg.get("data", {}).get("storage") or None
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    rows = list(df[["utt", "uri"]].itertuples(index=False))
    out = Embeddings()
    start, total = time.monotonic(), len(rows)

    def load(row: Any) -> tuple[str, torch.Tensor | None, str | None]:
        try:
            return str(row.utt), _features(row, cfg, max_frames, storage_options), None
        except ValueError as exc:  # AudioError / FeatureError are ValueErrors with one line
            return str(row.utt), None, str(exc)

    # Decoding and feature extraction are I/O + C code that release the GIL: a small thread
    # pool keeps the encoder fed. Blocks bound the features held in memory at once.
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, load_workers)) as pool, torch.no_grad():
        for b0 in range(0, total, _BLOCK):
            items: list[tuple[str, torch.Tensor]] = []
            for utt, feats, err in pool.map(load, rows[b0 : b0 + _BLOCK]):
                if feats is None:
                    out.skipped[utt] = err or "unknown error"
                else:
                    items.append((utt, feats))
            for utts, batch in _batches(items, batch_size, crop_tolerance):
                emb = encoder(batch.to(device)).float().cpu().numpy()
                out.update(zip(utts, emb))
            done = min(total, b0 + _BLOCK)
            if progress:
                print(f"embedded {done}/{total} utterances, {len(out.skipped)} skipped "
                      f"({time.monotonic() - start:.1f}s)", file=sys.stderr, flush=True)
    encoder.train(was_training)  # leave the caller's module as it was
    if out.skipped:
        first = next(iter(out.skipped.items()))
        log.warning("embed_utterances: skipped %d of %d utterances (first: %s: %s)",
                    len(out.skipped), total, *first)
    if total and not out:
        raise EmbeddingError(f"embed_utterances: none of {total} utterances could be embedded "
                             f"(first error: {next(iter(out.skipped.values()))})")
    return out
