"""The front end of one utterance, without Ray: crop-only read -> preprocess -> int16 crop +
random plan -> augment -> features (``FrontEnd``), the random-length batch crop, and the
evaluation front end (``extract_features``). ``frontend.stream`` runs ``FrontEnd`` in Ray Data
tasks; augmentation and features run there (``frontend.device`` cpu) or, batched, on the train
worker's device (worker/gpu; ``frontend.batch``). An utterance's crop and augmentation are drawn
from an RNG on ``(seed, execution, crc32(utt))``: the same features whoever computes them.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from speakertune.config import ConfigError
from speakertune.data.audio import fit_length
from speakertune.frontend.augment import Augmenter, num_classes_multiplier
from speakertune.frontend.batch import BatchFrontEnd, frontend_mode
from speakertune.frontend.features import build_feature, feature_dim, num_frames
from speakertune.frontend.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = [
    "FrontEnd", "SkipReport", "collate_random_crop", "crop_frames", "extract_features",
    "num_classes_multiplier", "stack_rows",
]


# ---------------------------------------------------------------------------- skip accounting
@dataclass
class SkipReport:
    """Utterances skipped since the last report: ``(utt, uri, reason)`` triples."""

    items: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def utts(self) -> list[str]:
        return [utt for utt, _, _ in self.items]

    def __str__(self) -> str:
        if not self.items:
            return "skipped 0 utterances"
        shown = "; ".join(f"{u}: {r}" for u, _, r in self.items[:5])
        more = f"; ... {self.count - 5} more" if self.count > 5 else ""
        return f"skipped {self.count} utterance(s): {shown}{more}"


# ----------------------------------------------------------------------------- the front end
def crop_frames(cfg: dict[str, Any]) -> tuple[int, int]:
    """(min_frames, max_frames) of the random-length crops in ``cfg["data"]``."""
    sr = int(cfg["data"]["sample_rate"])
    lo = num_frames(int(float(cfg["data"]["min_seconds"]) * sr), sr, cfg)
    hi = num_frames(int(float(cfg["data"]["max_seconds"]) * sr), sr, cfg)
    if not 0 < lo <= hi:
        raise ConfigError(
            f"data.min_seconds/max_seconds: need 0 < min <= max long enough for one frame, "
            f"got {cfg['data']['min_seconds']}/{cfg['data']['max_seconds']}"
        )
    return lo, hi


class FrontEnd:
    """The per-chunk work of the stream: rows ``utt, uri, label`` -> ``feats, label`` (or, when
    the train worker featurises, ``frontend_mode == "worker"``, raw int16 crops and their plans).

    ``read`` is the data side (fetch, decode, crop, preprocess, draw the plan); ``apply`` the
    batch front end. Also usable outside Ray (``process``) so that baselines run the same work.
    """

    def __init__(
        self, cfg: dict[str, Any], num_classes: int, noise_df: Any = None, rir_df: Any = None,
        storage_options: dict | None = None, seed: int = 0, skip_counter: Any = None,
    ) -> None:
        self.cfg = cfg
        self.sr = int(cfg["data"]["sample_rate"])
        self.num_classes = int(num_classes)
        self.storage_options = storage_options
        self.seed = int(seed)
        self.skips = skip_counter
        self.mode = frontend_mode(cfg)
        self.dim = feature_dim(cfg)
        self.preprocess = Preprocessor(cfg.get("preprocess"), self.sr)
        self.augment = Augmenter(cfg, noise_df, rir_df, seed, self.sr, storage_options)
        self.apply = BatchFrontEnd(cfg, self.augment, torch.device("cpu"))
        self.feature = self.apply.feature
        self.max_frames = crop_frames(cfg)[1]
        self.samples = self.apply.samples
        self.threads = int((cfg.get("frontend") or {}).get("fetch_threads", 1))
        self._pool: ThreadPoolExecutor | None = None

    def rng_for(self, utt: str, execution: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, execution, zlib.crc32(utt.encode())])

    def load(self, uri: str) -> np.ndarray:
        from speakertune.data.audio import decode_cap, load_audio

        return load_audio(uri, self.sr, self.storage_options, max_seconds=decode_cap(self.cfg))

    def fetch(self, uri: str, length: int, rng: np.random.Generator) -> np.ndarray:
        """The swappable read: ``length`` samples of ``uri`` at a crop offset drawn from ``rng``
        (only those samples decoded where the format allows)."""
        from speakertune.data.audio import load_audio_crop

        return load_audio_crop(uri, self.sr, length, rng, self.storage_options)

    def row(self, crop: Callable[[int, np.random.Generator], np.ndarray], label: int,
            rng: np.random.Generator) -> dict[str, Any]:
        """One utterance's raw row: speed draw, crop (``crop(length, rng)``), preprocessing,
        int16, the rest of its random plan, and its (speed-shifted) label."""
        factor, k = self.augment.speed_choice(rng)
        n = self.apply.crop_samples(factor)
        x = fit_length(self.preprocess(crop(n, rng)), n)  # VAD may have shortened it: tile
        wave = np.zeros(self.apply.max_crop(), np.int16)
        wave[:n] = np.clip(np.round(x * 32768.0), -32768, 32767)  # lossless for 16-bit sources
        plan = self.augment.draw(rng, self.max_frames, self.dim)
        label = int(label) + self.augment.label_offset(k, self.num_classes)
        return {"wave": wave, "speed": np.int8(k), **plan, "label": np.int64(label)}

    def process(
        self, wave: np.ndarray, label: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Crop, preprocess, augment and featurise one decoded utterance (a batch of one)."""
        r = self.row(lambda n, g: fit_length(wave, n, g), label, rng)
        return self.apply(stack_rows([r]))[0].numpy(), int(r["label"])

    def read(
        self, batch: dict[str, np.ndarray], execution: int
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
        """Rows ``utt, uri, label`` -> raw rows (fetched concurrently) and the skipped ones."""
        def one(item: tuple[Any, Any, Any]) -> dict[str, Any] | tuple[str, str, str]:
            utt, uri, label = str(item[0]), str(item[1]), int(item[2])
            try:
                return self.row(lambda n, g: self.fetch(uri, n, g), label,
                                self.rng_for(utt, execution))  # fmt: skip
            except (OSError, ValueError) as exc:  # missing / corrupt / empty: skip and count
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return (utt, uri, reason)

        items = list(zip(batch["utt"], batch["uri"], batch["label"]))
        if self.threads > 1 and len(items) > 1:
            self._pool = self._pool or ThreadPoolExecutor(self.threads)
            out = list(self._pool.map(one, items))
        else:
            out = [one(it) for it in items]
        return ([r for r in out if isinstance(r, dict)],
                [r for r in out if isinstance(r, tuple)])  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray], execution: int = 0) -> dict[str, np.ndarray]:
        """Rows of epoch ``execution`` -> ``feats, label`` (or raw rows), skips dropped."""
        return self.emit(*self.read(batch, execution))

    def emit(
        self, rows: list[dict[str, Any]], skipped: list[tuple[str, str, str]]
    ) -> dict[str, np.ndarray]:
        """Raw rows -> the stream's output (features, or the raw rows when the worker
        featurises); skipped utterances are logged and counted."""
        if skipped:
            log.warning("front end skipped %d utterance(s): %s", len(skipped), skipped[:3])
            if self.skips is not None:
                self.skips.add(skipped)
        raw = stack_rows(rows, self)
        if self.mode == "worker":
            return raw
        feats = self.apply(raw).numpy() if rows else np.zeros((0, self.max_frames, self.dim))
        return {"feats": feats.astype(np.float32, copy=False), "label": raw["label"]}


def stack_rows(rows: list[dict[str, Any]], fe: FrontEnd | None = None) -> dict[str, np.ndarray]:
    """Raw rows -> a raw batch of columns (``fe`` gives the shapes when ``rows`` is empty)."""
    if rows:
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    empty = fe.row(lambda n, g: np.zeros(n, np.float32), 0, np.random.default_rng(0))
    return {k: np.zeros((0, *np.shape(v)), np.asarray(v).dtype) for k, v in empty.items()}


# ------------------------------------------------------------------------ batches and eval
def collate_random_crop(
    batch: dict[str, Any], min_frames: int, max_frames: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop every row of a batch to one random length in ``[min_frames, max_frames]``.

    One length per batch (Kaldi's random-length "egs") keeps batches rectangular; each row gets
    its own random offset. Returns ``(feats[B, L, D] float32, labels[B] int64)``.
    """
    # Ray hands out read-only views; torch needs writable memory (copied only if read-only).
    # Features made on the train worker's device arrive as tensors there and stay there.
    feats, labels = batch["feats"], batch["label"]
    if not isinstance(feats, torch.Tensor):
        feats = torch.from_numpy(np.require(feats, np.float32, requirements="W"))
    if not isinstance(labels, torch.Tensor):
        labels = torch.from_numpy(np.require(labels, np.int64, requirements="W"))
    total = feats.shape[1]
    hi = min(max_frames, total)
    length = int(rng.integers(min(min_frames, hi), hi + 1))
    starts = torch.as_tensor(rng.integers(0, total - length + 1, size=feats.shape[0]),
                             device=feats.device)  # fmt: skip
    idx = starts[:, None] + torch.arange(length, device=feats.device)[None, :]
    cropped = torch.gather(feats, 1, idx[:, :, None].expand(-1, -1, feats.shape[2]))
    return cropped, labels


def extract_features(
    wave: np.ndarray | torch.Tensor, cfg: dict[str, Any], name: str = "<waveform>"
) -> torch.Tensor:
    """Evaluation front end: preprocessing + features (+ mean normalisation), no augmentation.

    ``wave`` must already be at ``cfg["data"]["sample_rate"]``. For repeated calls, build a
    ``FrontEnd`` (or cache ``build_feature``) instead; this rebuilds the extractor.
    """
    sr = int(cfg["data"]["sample_rate"])
    x = np.asarray(wave.numpy() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
    x = Preprocessor(cfg.get("preprocess"), sr)(x)
    return build_feature(cfg)(torch.from_numpy(np.ascontiguousarray(x)), sr, name)
