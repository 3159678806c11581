"""Training front end streamed by Ray Data: manifest -> bytes -> crop -> preprocess -> augment
-> features, computed by CPU tasks and streamed into Ray Train workers.

The dataset is a range of chunk indices; each task turns chunk ``i`` of this epoch's permutation
of the manifest into feature rows. Everything random is keyed on Ray Data's execution index
(one per epoch): the permutation on ``(seed, execution)``, an utterance's crop and augmentation
on ``(seed, execution, crc32(utt))``. So every epoch is a fresh global shuffle with new crops,
reproducible whichever worker runs what, and without an all-to-all shuffle (which costs seconds
per epoch). Tasks rather than actors: Ray's worker processes outlive an execution, so the
front end built in one (cached per process) is reused next epoch instead of being restarted.
"""

from __future__ import annotations

import logging
import math
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from speakertune.config import ConfigError
from speakertune.frontend.augment import (
    Augmenter,
    fit_length,
    num_classes_multiplier,
    speed_perturb,
)
from speakertune.frontend.features import build_feature, feature_dim, num_frames
from speakertune.frontend.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = [
    "FrontEnd", "RandomCropCollate", "SkipCounter", "SkipReport", "build_train_dataset",
    "collate_random_crop", "crop_frames", "extract_features", "num_classes_multiplier",
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


@ray.remote(num_cpus=0)
class _SkipLedger:
    def __init__(self) -> None:
        self.new: list[tuple[str, str, str]] = []
        self.all: list[tuple[str, str, str]] = []

    def add(self, items: list[tuple[str, str, str]]) -> None:
        self.new.extend(items)
        self.all.extend(items)

    def pop(self) -> list[tuple[str, str, str]]:
        out, self.new = self.new, []
        return out

    def total(self) -> list[tuple[str, str, str]]:
        return list(self.all)


class SkipCounter:
    """Counts utterances that the front end could not read or decode, across all data workers.

    Backed by a small named Ray actor (0 CPUs) so every worker reports to one place; the object
    pickles (it carries the actor handle), so it can be handed to train workers. Call ``pop()``
    at the end of each epoch for that epoch's report.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"speakertune-skips-{uuid.uuid4().hex[:12]}"
        self.actor = _SkipLedger.options(name=self.name, get_if_exists=True).remote()

    def add(self, items: list[tuple[str, str, str]]) -> None:
        # Synchronous so a report taken right after the epoch's last batch includes these.
        ray.get(self.actor.add.remote(items))

    def pop(self) -> SkipReport:
        return SkipReport(ray.get(self.actor.pop.remote()))

    def total(self) -> SkipReport:
        return SkipReport(ray.get(self.actor.total.remote()))

    def close(self) -> None:
        ray.kill(self.actor)


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


def _samples_for_frames(frames: int, sr: int, cfg: dict[str, Any]) -> int:
    feat = cfg.get("features", cfg)
    window = int(sr * feat.get("frame_length", 25.0) / 1000)
    shift = int(sr * feat.get("frame_shift", 10.0) / 1000)
    return window + (frames - 1) * shift


class FrontEnd:
    """The per-utterance work of the stream: rows ``utt, uri, label`` -> ``feats, label``.

    Also usable outside Ray (``process``) so that baselines run exactly the same work.
    """

    def __init__(
        self, cfg: dict[str, Any], num_classes: int, noise_df: Any = None, rir_df: Any = None,
        storage_options: dict | None = None, seed: int = 0, skip_counter: SkipCounter | None = None,
    ) -> None:
        self.cfg = cfg
        self.sr = int(cfg["data"]["sample_rate"])
        self.num_classes = int(num_classes)
        self.storage_options = storage_options
        self.seed = int(seed)
        self.skips = skip_counter
        self.feature = build_feature(cfg)
        self.dim = feature_dim(cfg)
        self.preprocess = Preprocessor(cfg.get("preprocess"), self.sr)
        self.augment = Augmenter(cfg, noise_df, rir_df, seed, self.sr, storage_options)
        self.max_frames = crop_frames(cfg)[1]
        self.samples = _samples_for_frames(self.max_frames, self.sr, cfg)

    def rng_for(self, utt: str, execution: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, execution, zlib.crc32(utt.encode())])

    def load(self, uri: str) -> np.ndarray:
        from speakertune.data.audio import load_audio

        return load_audio(uri, self.sr, self.storage_options)

    def process(
        self, wave: np.ndarray, label: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Crop, preprocess, augment and featurise one decoded utterance."""
        factor, k = self.augment.speed_choice(rng)
        # Crop a bit more than needed when speeding up so the perturbed crop still fills it.
        x = fit_length(wave, math.ceil(self.samples * factor) + 1, rng)
        x = self.preprocess(x)
        x = speed_perturb(x, self.sr, factor)
        x = self.augment.waveform(x, rng)
        x = fit_length(x, self.samples)  # VAD/speed may have shortened it: tile back up
        feats = self.feature(torch.from_numpy(np.ascontiguousarray(x)), self.sr).numpy()
        feats = self.augment.features(feats, rng)
        return feats, int(label) + self.augment.label_offset(k, self.num_classes)

    def __call__(self, batch: dict[str, np.ndarray], execution: int = 0) -> dict[str, np.ndarray]:
        """Rows ``utt, uri, label`` of epoch ``execution`` -> ``feats, label`` (skips dropped)."""
        feats, labels, skipped = [], [], []
        for utt, uri, label in zip(batch["utt"], batch["uri"], batch["label"]):
            utt, uri = str(utt), str(uri)
            try:
                wave = self.load(uri)
            except (OSError, ValueError) as exc:  # missing / corrupt / empty: skip and count
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                skipped.append((utt, uri, reason))
                continue
            f, lab = self.process(wave, int(label), self.rng_for(utt, execution))
            feats.append(f)
            labels.append(lab)
        if skipped:
            log.warning("front end skipped %d utterance(s): %s", len(skipped), skipped[:3])
            if self.skips is not None:
                self.skips.add(skipped)
        out = np.stack(feats) if feats else np.zeros((0, self.max_frames, self.dim), np.float32)
        return {"feats": out.astype(np.float32, copy=False), "label": np.asarray(labels, np.int64)}


# A worker process keeps the front end (and its noise/RIR cache) of the datasets it served.
_FRONT_ENDS: dict[str, tuple[FrontEnd, dict[str, np.ndarray]]] = {}
_PERMUTATIONS: dict[tuple[str, int], np.ndarray] = {}


def _front_end_chunks(
    batch: dict[str, np.ndarray], token: str, spec_ref: Any, seed: int, chunk_rows: int
) -> dict[str, np.ndarray]:
    """Map task: chunk indices -> feature rows of those chunks of this epoch's permutation."""
    from ray.data import DataContext

    if token not in _FRONT_ENDS:
        torch.set_num_threads(1)  # one task per data CPU: no intra-op oversubscription
        if len(_FRONT_ENDS) >= 4:  # a long-lived worker serving many trials: stay bounded
            _FRONT_ENDS.pop(next(iter(_FRONT_ENDS)))
        spec = ray.get(spec_ref)
        rows = spec.pop("rows")
        _FRONT_ENDS[token] = (FrontEnd(**spec), rows)
    fe, rows = _FRONT_ENDS[token]
    # Ray Data's own seeded random ops key on this (private) per-execution counter too.
    execution = int(getattr(DataContext.get_current(), "_execution_idx", 0))
    key = (token, execution)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, execution]).permutation(len(rows["uri"]))
    perm = _PERMUTATIONS[key]
    idx = np.concatenate([perm[c * chunk_rows : (c + 1) * chunk_rows] for c in batch["id"]])
    return fe({name: col[idx] for name, col in rows.items()}, execution)


def build_train_dataset(
    corpus: Any, cfg: dict[str, Any], epoch_seed: int = 0, *,
    skip_counter: SkipCounter | None = None, chunk_rows: int | None = None,
) -> ray.data.Dataset:
    """The training stream: rows ``{"feats": float32[max_frames, dims], "label": int64}``.

    Feature work runs in at most ``trainer.data_cpus`` concurrent one-CPU tasks. The
    ``SkipCounter`` in use is attached as ``dataset.skip_counter`` (a new one unless given).
    """
    df = corpus.train
    if len(df) == 0:
        raise ConfigError("data: the training set is empty (no utterances to stream)")
    data_cpus = max(1, int(cfg["trainer"].get("data_cpus", 1)))
    counter = skip_counter or SkipCounter()
    rows = {"utt": df["utt"].astype(str).to_numpy(), "uri": df["uri"].astype(str).to_numpy(),
            "label": df["label"].to_numpy(np.int64)}  # fmt: skip
    spec = {
        "cfg": cfg, "num_classes": corpus.num_classes, "rows": rows,
        "noise_df": getattr(corpus, "noise", None), "rir_df": getattr(corpus, "rir", None),
        "storage_options": getattr(corpus, "storage_options", None),
        "seed": int(epoch_seed), "skip_counter": counter,
    }
    FrontEnd(**{k: v for k, v in spec.items() if k != "rows"})  # fail fast on bad config here
    if cfg["data"].get("shards"):  # a sharded corpus: only the read step differs
        from speakertune.data.shards import build_shard_dataset

        return build_shard_dataset(spec, cfg, data_cpus)
    # Utterances per task: big enough to amortise task overhead (~1 ms), small enough that
    # every data CPU gets several tasks per epoch and the first batch arrives early.
    chunk_rows = chunk_rows or min(32, max(4, math.ceil(len(df) / (4 * data_cpus))))
    chunks = math.ceil(len(df) / chunk_rows)
    # In-memory input blocks, not ray.data.range: its read tasks would each hold a CPU slot
    # and starve the feature tasks of the small data-CPU budget.
    groups = np.array_split(np.arange(chunks), min(chunks, 512))
    ds = ray.data.from_pandas([pd.DataFrame({"id": g}) for g in groups]).map_batches(
        _front_end_chunks,
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
        # At most data_cpus tasks at once (``concurrency=`` is deprecated in Ray 2.60).
        compute=ray.data.TaskPoolStrategy(size=data_cpus),
        fn_kwargs={"token": uuid.uuid4().hex, "spec_ref": ray.put(spec),
                   "seed": int(epoch_seed), "chunk_rows": chunk_rows},  # fmt: skip
    )
    # One CPU operator only: per-operator reservations just hold half the data CPUs back at the
    # start of every epoch (measured ~20% slower epochs on 2 CPUs).
    ds.context.op_resource_reservation_enabled = False
    # Streamed epochs print one progress line each from the trainer; Ray Data's own bars from
    # every worker would interleave with (and outlive) the sweep's table and leaderboard.
    ds.context.enable_progress_bars = False
    ds.skip_counter = counter
    return ds


# ------------------------------------------------------------------------ batches and eval
def collate_random_crop(
    batch: dict[str, Any], min_frames: int, max_frames: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop every row of a batch to one random length in ``[min_frames, max_frames]``.

    One length per batch (Kaldi's random-length "egs") keeps batches rectangular; each row gets
    its own random offset. Returns ``(feats[B, L, D] float32, labels[B] int64)``.
    """
    # Ray hands out read-only views; torch needs writable memory (copied only if read-only).
    feats = torch.from_numpy(np.require(batch["feats"], np.float32, requirements="W"))
    labels = torch.from_numpy(np.require(batch["label"], np.int64, requirements="W"))
    total = feats.shape[1]
    hi = min(max_frames, total)
    length = int(rng.integers(min(min_frames, hi), hi + 1))
    starts = torch.as_tensor(rng.integers(0, total - length + 1, size=feats.shape[0]))
    idx = starts[:, None] + torch.arange(length)[None, :]
    cropped = torch.gather(feats, 1, idx[:, :, None].expand(-1, -1, feats.shape[2]))
    return cropped, labels


class RandomCropCollate(NumpyBatchCollateFn):
    """``collate_fn`` for ``iter_torch_batches``: ``collate_random_crop`` with its own RNG."""

    def __init__(self, cfg: dict[str, Any], seed: int = 0) -> None:
        self.min_frames, self.max_frames = crop_frames(cfg)
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_random_crop(batch, self.min_frames, self.max_frames, self.rng)


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
