"""The one embedding path: features -> encoder -> one embedding per utterance.

Per-epoch validation (``train/worker.py``, scored by ``scoring/verification.py``), evaluation
(``scoring/evaluate.py``) and the window batching of diarization all go through here, so a
checkpoint's dev EER in a sweep and its EER from ``evaluate`` are the same number for the same
trials and ``max_seconds``.

Rules (see ``segments`` and ``centre_crop``):

* The **whole utterance** is embedded by default. ``max_seconds`` (for validation
  ``trainer.val_max_seconds``) optionally keeps a centred crop of at most that long, which
  bounds time and the memory of cached features; ``None`` means no cap.
* An utterance longer than ``CHUNK_FRAMES`` (15 s at the usual 10 ms shift) is embedded as
  ``ceil(n / CHUNK_FRAMES)`` chunks of exactly ``CHUNK_FRAMES`` frames, evenly spaced from its
  first to its last frame, and its embedding is the mean of theirs. Encoders are trained on a
  few seconds; 15 s keeps most VoxCeleb utterances (8 s on average) whole while bounding the
  activation memory of one forward pass. The length is in frames because frames are what the
  encoder sees.
* Only segments of exactly equal length share a batch (no padding, no cropping to the
  shortest), so an embedding does not depend on its batch, worker or block. Long utterances
  all yield ``CHUNK_FRAMES`` chunks, which batch together.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)
CHUNK_FRAMES = 1500  # 15 s at a 10 ms frame shift; longer utterances are chunked and averaged
_BLOCK = 512  # utterances whose features embed_utterances holds in memory at once


class EmbeddingError(ValueError):
    """Embedding extraction could not run (bad table, nothing decodable)."""


class Embeddings(dict):
    """``utt -> ndarray[D]``; ``skipped`` maps each utterance that failed to its reason."""

    def __init__(self, *args: Any, skipped: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.skipped: dict[str, str] = dict(skipped or {})


@dataclass
class Features:
    """Evaluation features of a table: ``feats`` utt -> [frames, dims]; ``skipped`` utt ->
    the one-line reason it could not be decoded or featurised."""

    feats: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def max_frames(cfg: dict[str, Any], max_seconds: float | None) -> int | None:
    """Frames in ``max_seconds`` at the config's frame shift (None: no cap).

    >>> max_frames({"features": {"frame_shift": 10.0}}, 6.0)
    600
    """
    if not max_seconds:
        return None
    shift_ms = float((cfg.get("features") or {}).get("frame_shift", 10.0))
    return max(1, int(float(max_seconds) * 1000 / shift_ms))


def centre_crop(feats: torch.Tensor, limit: int | None) -> torch.Tensor:
    """The middle ``limit`` frames of ``feats`` [T, F] (all of them when T <= limit or no limit).

    >>> centre_crop(torch.zeros(900, 80), 600).shape
    torch.Size([600, 80])
    """
    n = feats.shape[0]
    if limit is None or n <= limit:
        return feats
    start = (n - limit) // 2  # the middle: leading/trailing silence is the likeliest filler
    return feats[start : start + limit]


def segments(n: int, chunk: int = CHUNK_FRAMES) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges an utterance of ``n`` frames is embedded from.

    >>> segments(900)
    [(0, 900)]
    >>> segments(3200)  # three 1500-frame chunks covering every frame
    [(0, 1500), (850, 2350), (1700, 3200)]
    """
    if n <= chunk:
        return [(0, n)]
    k = -(-n // chunk)
    starts = np.linspace(0, n - chunk, k).round().astype(int)
    return [(int(s), int(s) + chunk) for s in starts]


@contextlib.contextmanager
def _eval_mode(encoder: torch.nn.Module) -> Iterator[None]:
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)  # leave the caller's module as it was


@torch.no_grad()
def encode_segments(
    encoder: torch.nn.Module,
    segs: Sequence[torch.Tensor],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast: Any = None,
) -> np.ndarray:
    """Run ``encoder`` over segments ([T_i, F] each), batching only equal lengths.

    Example: ``encode_segments(enc, [randn(300, 80), randn(450, 80)])`` -> ndarray [2, D].
    """
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(segs):
        by_len.setdefault(int(s.shape[0]), []).append(i)
    out: list[np.ndarray | None] = [None] * len(segs)
    with _eval_mode(encoder):
        for n in sorted(by_len):
            members = by_len[n]
            for k in range(0, len(members), batch_size):
                part = members[k : k + batch_size]
                x = torch.stack([segs[i] for i in part]).float().to(device)
                with autocast if autocast is not None else contextlib.nullcontext():
                    emb = encoder(x)
                for i, e in zip(part, emb.float().cpu().numpy()):
                    out[i] = e
    return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def embed_features(
    encoder: torch.nn.Module,
    feats: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    chunk_frames: int = CHUNK_FRAMES,
) -> dict[str, np.ndarray]:
    """One float32 embedding per utterance of ``feats`` (utt -> [T, F]): the encoder on all
    of it, or the mean over its chunks when T > ``chunk_frames``.

    Example: ``embed_features(enc, {"u1": randn(837, 80), "u2": randn(3200, 80)})`` ->
    ``{"u1": [D], "u2": [D]}`` (u2: mean of three 1500-frame chunks).
    """
    owner: list[str] = []
    segs: list[torch.Tensor] = []
    for utt, f in feats.items():
        for a, b in segments(int(f.shape[0]), chunk_frames):
            owner.append(utt)
            segs.append(f[a:b])
    emb = encode_segments(encoder, segs, batch_size=batch_size, device=device, autocast=autocast)
    rows: dict[str, list[int]] = {}
    for i, utt in enumerate(owner):
        rows.setdefault(utt, []).append(i)
    return {u: emb[r[0]] if len(r) == 1 else emb[r].mean(axis=0) for u, r in rows.items()}


def _load_one(row: Any, cfg: dict[str, Any], limit: int | None,
              storage_options: dict[str, Any] | None) -> torch.Tensor:
    from speakertune.data.audio import decode_cap, load_audio
    from speakertune.frontend.pipeline import extract_features

    sr = int(cfg.get("data", {}).get("sample_rate", 16000))
    wave = load_audio(row.uri, sr, storage_options, max_seconds=decode_cap(cfg))
    feats = torch.as_tensor(extract_features(wave, cfg, str(row.uri)), dtype=torch.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{row.uri}: no feature frames (audio too short?)")
    return centre_crop(feats, limit).contiguous()


def load_features(
    df: pd.DataFrame,
    cfg: dict[str, Any],
    *,
    max_seconds: float | None = None,
    storage_options: dict[str, Any] | None = None,
    load_workers: int = 1,
) -> Features:
    """Decode and featurise every row of ``df`` (columns ``utt``, ``uri``; no augmentation),
    keeping a centred crop of at most ``max_seconds``. Failures are kept, not raised.

    Example: ``load_features(df, cfg, max_seconds=6.0).feats["u1"]`` -> tensor [<= 600, 80].
    """
    for col in ("utt", "uri"):
        if col not in df.columns:
            raise EmbeddingError(f"embedding table has no column {col!r}")
    if storage_options is None:
        storage_options = cfg.get("data", {}).get("storage") or None
    limit = max_frames(cfg, max_seconds)

    def load(row: Any) -> tuple[str, torch.Tensor | None, str]:
        try:
            return str(row.utt), _load_one(row, cfg, limit, storage_options), ""
        except ValueError as exc:  # AudioError / FeatureError are ValueErrors with one line
            return str(row.utt), None, str(exc).splitlines()[0] if str(exc) else "unknown error"

    out = Features()
    rows = list(df[["utt", "uri"]].itertuples(index=False))
    # Decoding and feature extraction are I/O + C code that release the GIL: a small thread
    # pool keeps the encoder fed.
    with ThreadPoolExecutor(max_workers=max(1, load_workers)) as pool:
        for utt, feats, err in pool.map(load, rows):
            if feats is None:
                out.skipped[utt] = err
            else:
                out.feats[utt] = feats
    return out


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
    load_workers: int = 2,
) -> Embeddings:
    """Embed every row of ``df`` (columns ``utt``, ``uri``) by the rules above; undecodable
    utterances are skipped, counted in ``result.skipped`` and logged; if none succeeds it raises.

    Example: ``embed_utterances(encoder, manifest_df, cfg)["u1"]`` -> ndarray [D] (float32).
    """
    for col in ("utt", "uri"):
        if col not in df.columns:
            raise EmbeddingError(f"embed_utterances: table has no column {col!r}")
    encoder = encoder.to(device)
    out = Embeddings()
    start, total = time.monotonic(), len(df)
    for b0 in range(0, total, _BLOCK):  # blocks bound the features held in memory at once
        part = load_features(df.iloc[b0 : b0 + _BLOCK], cfg, max_seconds=max_seconds,
                             storage_options=storage_options, load_workers=load_workers)
        out.skipped.update(part.skipped)
        out.update(embed_features(encoder, part.feats, batch_size=batch_size, device=device))
        if progress:
            print(f"embedded {min(total, b0 + _BLOCK)}/{total} utterances, "
                  f"{len(out.skipped)} skipped ({time.monotonic() - start:.1f}s)",
                  file=sys.stderr, flush=True)
    if out.skipped:
        first = next(iter(out.skipped.items()))
        log.warning("embed_utterances: skipped %d of %d utterances (first: %s: %s)",
                    len(out.skipped), total, *first)
    if total and not out:
        raise EmbeddingError(f"embed_utterances: none of {total} utterances could be embedded "
                             f"(first error: {next(iter(out.skipped.values()))})")
    return out


def describe(max_seconds: float | None, chunk_frames: int = CHUNK_FRAMES) -> str:
    """One line saying how utterances are embedded, for reports."""
    crop = f"centred crops of at most {max_seconds:g} s" if max_seconds else "full utterances"
    return f"{crop}, any over {chunk_frames} frames as the mean of {chunk_frames}-frame chunks"
