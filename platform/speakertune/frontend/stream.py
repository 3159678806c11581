"""The training stream on Ray Data, from either source: per-file chunks of the manifest, or the
Parquet shards of ``data.shards`` (``data.shards`` holds their file format). Both are one
operator of one-CPU tasks (at most ``trainer.data_cpus`` at once) over in-memory blocks of
slot numbers, and each task turns its slot into the front end's rows (``frontend.pipeline``).

Everything random is keyed on Ray Data's execution index (one per epoch): the order of chunks
or shards on ``(seed, execution)``, an utterance's crop and augmentation on ``(seed, execution,
crc32(utt))``. So every epoch is a fresh global shuffle with new crops, the same for both
sources, reproducible whichever worker runs what, and without an all-to-all shuffle (seconds
per epoch). Tasks rather than actors: Ray's worker processes outlive an execution, so the
front end built in one (cached per process) is reused next epoch. Shards are read a row group
at a time and shuffled within buffers of ``data.shard_buffer`` rows; ``randomize_block_order``
is not used: it is a barrier (every block read before the first is handed on).
"""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from speakertune.config import ConfigError
from speakertune.data.audio import fit_length
from speakertune.data.errors import DataError
from speakertune.data.shards import decode_row, read_index
from speakertune.data.storage import get_filesystem, join
from speakertune.frontend.augment import Augmenter
from speakertune.frontend.batch import BatchFrontEnd, check_device
from speakertune.frontend.pipeline import FrontEnd, SkipReport, collate_random_crop, crop_frames


# ---------------------------------------------------------------------------- skip accounting
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


# ------------------------------------------------------------ the task side, both sources
# A worker process keeps the front end (and its noise/RIR cache) of the datasets it served.
_TASKS: dict[str, tuple[FrontEnd, dict[str, Any]]] = {}
_ORDERS: dict[tuple[str, int], np.ndarray] = {}


def _task_state(token: str, spec_ref: Any) -> tuple[FrontEnd, dict[str, Any]]:
    """This process's front end for one dataset, and the rest of its spec (cached, bounded)."""
    if token not in _TASKS:
        torch.set_num_threads(1)  # one task per data CPU: no intra-op oversubscription
        if len(_TASKS) >= 4:  # a long-lived worker serving many trials: stay bounded
            _TASKS.pop(next(iter(_TASKS)))
        spec = dict(ray.get(spec_ref))
        extra = {k: spec.pop(k) for k in ("rows", "shard_files") if k in spec}
        _TASKS[token] = (FrontEnd(**spec), extra)
    return _TASKS[token]


def _epoch_order(token: str, seed: int, n: int) -> tuple[int, np.ndarray]:
    """(execution index, this epoch's permutation of ``n`` slots). Ray Data's own seeded
    random ops key on the same (private) per-execution counter."""
    from ray.data import DataContext

    execution = int(getattr(DataContext.get_current(), "_execution_idx", 0))
    key = (token, execution)
    if key not in _ORDERS:
        _ORDERS.clear()
        _ORDERS[key] = np.random.default_rng([seed, execution]).permutation(n)
    return execution, _ORDERS[key]


def _chunk_task(batch: dict[str, np.ndarray], token: str, spec_ref: Any, seed: int,
                chunk_rows: int) -> dict[str, np.ndarray]:
    """Chunk numbers -> the stream's rows of those chunks of this epoch's permutation."""
    fe, extra = _task_state(token, spec_ref)
    rows = extra["rows"]
    execution, perm = _epoch_order(token, seed, len(rows["uri"]))
    idx = np.concatenate([perm[c * chunk_rows : (c + 1) * chunk_rows] for c in batch["id"]])
    return fe({name: col[idx] for name, col in rows.items()}, execution)


def _shard_task(batch: dict[str, np.ndarray], token: str, spec_ref: Any, seed: int,
                buffer: int) -> Iterator[dict[str, np.ndarray]]:
    """Slot ``i`` of this epoch's shard order -> the stream's rows of that shard, read a row
    group at a time (a generator: rows stream out while the shard is read)."""
    fe, extra = _task_state(token, spec_ref)
    if "labels" not in extra:
        rows = extra["rows"]
        extra["labels"] = dict(zip(rows["utt"].tolist(), rows["label"].tolist()))
    files = extra["shard_files"]
    execution, order = _epoch_order(token, seed, len(files))
    for slot in batch["id"]:
        fs, path = get_filesystem(files[order[int(slot)]], fe.storage_options)
        with fs.open_input_file(path) as f:
            for part in pq.ParquetFile(f).iter_batches(batch_size=buffer, columns=["utt", "audio"]):
                yield _shard_rows(fe, extra["labels"], part.to_pydict(), seed, execution)


def _shard_rows(fe: FrontEnd, labels: dict[str, int], rows_in: dict[str, list], seed: int,
                execution: int) -> dict[str, np.ndarray]:
    """Buffered shard rows -> the stream's rows for the training utterances, shuffled; rows
    that do not decode are skipped and counted."""
    utts = [str(u) for u in rows_in["utt"]]
    keep = [i for i, u in enumerate(utts) if u in labels]  # dev/test speakers never train
    if keep:
        rng = np.random.default_rng([seed, execution, zlib.crc32(utts[keep[0]].encode())])
        keep = [keep[i] for i in rng.permutation(len(keep))]
    rows, skipped = [], []
    for i in keep:
        try:
            wave = decode_row(rows_in["audio"][i], fe.sr, utts[i])
        except (OSError, ValueError) as exc:
            skipped.append((utts[i], f"shard row {utts[i]}", str(exc).splitlines()[0]))
            continue
        rows.append(fe.row(partial(fit_length, wave), labels[utts[i]],
                           fe.rng_for(utts[i], execution)))  # fmt: skip
    return fe.emit(rows, skipped)


# ------------------------------------------------------------------------ the driver side
def _one_operator(blocks: list[pd.DataFrame], fn: Callable, spec: dict[str, Any],
                  data_cpus: int, **kwargs: Any) -> ray.data.Dataset:
    """One map operator of at most ``data_cpus`` one-CPU tasks over in-memory ``blocks``
    (``ray.data.range`` or ``read_parquet`` would add read operators, each holding a CPU slot
    of the small data-CPU budget)."""
    ds = ray.data.from_pandas(blocks).map_batches(
        fn, batch_size=1, batch_format="numpy", num_cpus=1,
        # at most data_cpus tasks at once (``concurrency=`` is deprecated in Ray 2.60)
        compute=ray.data.TaskPoolStrategy(size=data_cpus),
        fn_kwargs={"token": uuid.uuid4().hex, "spec_ref": ray.put(spec),
                   "seed": int(spec["seed"]), **kwargs},
    )  # fmt: skip
    # Per-operator reservations only hold half the data CPUs back at the start of every epoch
    # (measured ~20% slower epochs on 2 CPUs).
    ds.context.op_resource_reservation_enabled = False
    # Streamed epochs print one progress line each from the trainer; Ray Data's own bars from
    # every worker would interleave with (and outlive) the sweep's table and leaderboard.
    ds.context.enable_progress_bars = False
    ds.skip_counter = spec["skip_counter"]
    return ds


def _shard_files(spec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The shard files of ``data.shards``; every training utterance must be in them."""
    shards = str(cfg["data"]["shards"])
    index = read_index(shards, spec.get("storage_options") or None)
    utts = pd.Series(spec["rows"]["utt"])
    missing = ~utts.isin(set(index["utt"]))
    if missing.any():
        raise DataError(f"data.shards: {int(missing.sum())} of {len(missing)} training "
                        f"utterances are not in {shards} (e.g. {utts[missing].iloc[0]!r}); "
                        "re-run `speakertune prepare shard` on this manifest")
    return [join(shards, name) for name in sorted(index["shard"].unique())]


def build_train_dataset(
    corpus: Any, cfg: dict[str, Any], epoch_seed: int = 0, *,
    skip_counter: SkipCounter | None = None, chunk_rows: int | None = None,
) -> ray.data.Dataset:
    """The training stream: rows ``{"feats": float32[max_frames, dims], "label": int64}``, or
    raw crops and plans (``stack_rows``) when the train worker featurises (``frontend.device``).

    The ``SkipCounter`` in use is attached as ``dataset.skip_counter`` (a new one unless given),
    and what a train worker needs to build its ``BatchFrontEnd`` as ``dataset.worker_frontend``
    (``None`` when the tasks featurise).
    """
    df = corpus.train
    if len(df) == 0:
        raise ConfigError("data: the training set is empty (no utterances to stream)")
    data_cpus = max(1, int(cfg["trainer"].get("data_cpus", 1)))
    spec = {
        "cfg": cfg, "num_classes": corpus.num_classes,
        "noise_df": getattr(corpus, "noise", None), "rir_df": getattr(corpus, "rir", None),
        "storage_options": getattr(corpus, "storage_options", None),
        "seed": int(epoch_seed), "skip_counter": skip_counter or SkipCounter(),
    }
    fe = FrontEnd(**spec)  # fail fast on a bad config, here rather than in every task
    spec["rows"] = {"utt": df["utt"].astype(str).to_numpy(),
                    "uri": df["uri"].astype(str).to_numpy(),
                    "label": df["label"].to_numpy(np.int64)}  # fmt: skip
    if cfg["data"].get("shards"):  # a sharded corpus: only the read step differs
        spec["shard_files"] = files = _shard_files(spec, cfg)
        blocks = [pd.DataFrame({"id": [i]}) for i in range(len(files))]
        buffer = max(1, int(cfg["data"].get("shard_buffer") or 256))
        ds = _one_operator(blocks, _shard_task, spec, data_cpus, buffer=buffer)
    else:
        # Utterances per task: big enough to amortise task overhead (~1 ms), small enough that
        # every data CPU gets several tasks per epoch and the first batch arrives early.
        chunk_rows = chunk_rows or min(32, max(4, math.ceil(len(df) / (4 * data_cpus))))
        chunks = math.ceil(len(df) / chunk_rows)
        groups = np.array_split(np.arange(chunks), min(chunks, 512))
        ds = _one_operator([pd.DataFrame({"id": g}) for g in groups], _chunk_task, spec,
                           data_cpus, chunk_rows=chunk_rows)  # fmt: skip
    ds.worker_frontend = None if fe.mode == "cpu" else {
        "cfg": cfg, "noise_df": spec["noise_df"], "rir_df": spec["rir_df"],
        "storage_options": spec["storage_options"]}  # fmt: skip
    return ds


def worker_frontend(spec: dict[str, Any], device: torch.device) -> BatchFrontEnd:
    """The train worker's batch front end from ``dataset.worker_frontend``."""
    cfg = spec["cfg"]
    check_device(cfg, device)
    aug = Augmenter(cfg, spec["noise_df"], spec["rir_df"], 0, int(cfg["data"]["sample_rate"]),
                    spec["storage_options"])  # fmt: skip
    return BatchFrontEnd(cfg, aug, device)


class RandomCropCollate(NumpyBatchCollateFn):
    """``collate_fn`` for ``iter_torch_batches``: ``collate_random_crop`` with its own RNG."""

    def __init__(self, cfg: dict[str, Any], seed: int = 0) -> None:
        self.min_frames, self.max_frames = crop_frames(cfg)
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_random_crop(batch, self.min_frames, self.max_frames, self.rng)
