"""Training front end streamed by Ray Data: manifest -> crop-only read -> preprocess -> int16
crop + random plan -> augment -> features. The last two run in the CPU tasks (``frontend.device``
cpu) or, batched, on the train worker's device (worker/gpu; ``frontend.batch``).

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from speakertune.config import ConfigError
from speakertune.frontend.augment import Augmenter, fit_length, num_classes_multiplier
from speakertune.frontend.batch import BatchFrontEnd, frontend_mode
from speakertune.frontend.features import build_feature, feature_dim, num_frames
from speakertune.frontend.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = [
    "FrontEnd", "RandomCropCollate", "SkipCounter", "SkipReport", "build_train_dataset",
    "collate_random_crop", "crop_frames", "extract_features", "num_classes_multiplier",
    "stack_rows", "worker_frontend",
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


class FrontEnd:
    """The per-chunk work of the stream: rows ``utt, uri, label`` -> ``feats, label`` (or, when
    the train worker featurises, ``frontend_mode == "worker"``, raw int16 crops and their plans).

    ``read`` is the data side (fetch, decode, crop, preprocess, draw the plan); ``apply`` the
    batch front end. Also usable outside Ray (``process``) so that baselines run the same work.
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
        from speakertune.data.audio import load_audio

        return load_audio(uri, self.sr, self.storage_options)

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
    """The training stream: rows ``{"feats": float32[max_frames, dims], "label": int64}``, or
    raw crops and plans (``stack_rows``) when the train worker featurises (``frontend.device``).

    Data work runs in at most ``trainer.data_cpus`` concurrent one-CPU tasks. The
    ``SkipCounter`` in use is attached as ``dataset.skip_counter`` (a new one unless given), and
    what a train worker needs to build its ``BatchFrontEnd`` as ``dataset.worker_frontend``
    (``None`` when the tasks featurise).
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
    fe = FrontEnd(**{k: v for k, v in spec.items() if k != "rows"})  # fail fast on bad config
    worker_spec = None if fe.mode == "cpu" else {
        "cfg": cfg, "noise_df": spec["noise_df"], "rir_df": spec["rir_df"],
        "storage_options": spec["storage_options"]}  # fmt: skip
    if cfg["data"].get("shards"):  # a sharded corpus: only the read step differs
        from speakertune.data.shards import build_shard_dataset

        ds = build_shard_dataset(spec, cfg, data_cpus)
        ds.worker_frontend = worker_spec
        return ds
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
    ds.worker_frontend = worker_spec
    return ds


def worker_frontend(spec: dict[str, Any], device: torch.device) -> BatchFrontEnd:
    """The train worker's batch front end from ``dataset.worker_frontend``."""
    cfg = spec["cfg"]
    aug = Augmenter(cfg, spec["noise_df"], spec["rir_df"], 0, int(cfg["data"]["sample_rate"]),
                    spec["storage_options"])  # fmt: skip
    return BatchFrontEnd(cfg, aug, device)


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
