"""One trial = one Ray Train ``TorchTrainer`` run (DDP: gloo on CPU, NCCL on GPU).

The driver (or the Tune trial) loads the corpus and builds the Ray Data training pipeline; each
worker trains on its streamed shard, then validates on the held-out speakers with cosine and
PLDA scoring and reports metrics with a checkpoint (rank 0 writes it). A restarted worker group
resumes from the latest checkpoint at the next epoch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from speakertune.config import DEFAULTS, ConfigError, deep_merge

REPORT_KEYS = (
    "epoch", "train_loss", "train_acc", "lr", "val_eer", "val_eer_cosine", "val_eer_plda",
    "val_min_dcf_cosine", "val_min_dcf_plda", "num_params", "skipped_utterances", "epoch_time_s",
)


class TrainerError(RuntimeError):
    """A trial cannot be set up or run; the message names the config key or file."""


# ---------------------------------------------------------------------------- driver side


def resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` over the defaults, so every key the loop reads exists."""
    return deep_merge(DEFAULTS, cfg or {})


def _gpus_per_worker(tcfg: dict[str, Any]) -> float:
    return float(tcfg.get("gpus_per_worker", 1)) if tcfg.get("use_gpu") else 0.0


def trial_resources(cfg: dict[str, Any]) -> dict[str, float]:
    """CPUs and GPUs one trial holds at once: its Train workers plus its Ray Data CPUs."""
    t = resolved(cfg)["trainer"]
    n = int(t["num_workers"])
    return {
        "CPU": n * float(t["cpus_per_worker"]) + float(t.get("data_cpus", 0) or 0),
        "GPU": n * _gpus_per_worker(t),
    }


def _scaling_config(cfg: dict[str, Any]):
    from ray.train import ScalingConfig

    t = cfg["trainer"]
    per_worker = {"CPU": float(t["cpus_per_worker"])}
    if t.get("use_gpu"):
        per_worker["GPU"] = _gpus_per_worker(t)
    return ScalingConfig(
        num_workers=int(t["num_workers"]), use_gpu=bool(t.get("use_gpu")),
        resources_per_worker=per_worker,
    )


def _records(df: pd.DataFrame, cols: list[str]) -> dict[str, list]:
    return {c: df[c].astype(str).tolist() for c in cols}


def prepare(cfg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Load the corpus and build the training dataset: returns ``(meta, dataset)``, where
    ``meta`` is everything the workers need besides the config (small, pickled once)."""
    from speakertune.data.corpus import load_corpus
    from speakertune.data.sampling import plda_sample
    from speakertune.frontend.features import feature_dim
    from speakertune.frontend.pipeline import build_train_dataset, num_classes_multiplier

    t = cfg["trainer"]
    corpus = load_corpus(cfg["data"])
    # Speed perturbation "as new speakers" widens the classifier (the front end decides).
    multiplier = int(num_classes_multiplier(cfg))
    seed = int(t.get("seed", 0))
    sample = plda_sample(corpus.train, int(t["plda_utts"]), int(t["plda_utts_per_speaker"]), seed)
    trials = corpus.trials
    meta = {
        "num_classes": int(corpus.num_classes) * multiplier,
        "feat_dim": int(feature_dim(cfg)),
        "num_train": len(corpus.train),
        "num_train_speakers": int(corpus.train["spk"].nunique()),
        "val": _records(corpus.val, ["utt", "spk", "uri"]),
        "plda": _records(sample, ["utt", "spk", "uri"]),
        "trials": {
            "enroll": trials["enroll"].astype(str).tolist(),
            "test": trials["test"].astype(str).tolist(),
            "label": trials["label"].astype(int).tolist(),
        },
        "storage_options": dict(corpus.storage_options or {}),
    }
    dataset = build_train_dataset(corpus, cfg, epoch_seed=seed)
    meta["skip_counter"] = dataset.skip_counter  # a Ray actor handle: pickles to the workers
    return meta, dataset


def _local_run_dir(storage_path: str, name: str) -> str | None:
    return None if "://" in storage_path else os.path.join(storage_path, name)


def _dry_build(cfg: dict[str, Any], meta: dict[str, Any]) -> None:
    """Build model, loss, optimiser and schedule once on the driver, so that a bad name or
    option fails here with its one-line message rather than inside every Ray worker."""
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder
    from speakertune.train.optim import build_optimizer, build_scheduler
    from speakertune.train.precision import resolve_amp

    enc = build_encoder(cfg["model"], cfg["pooling"], meta["feat_dim"], int(cfg["embed_dim"]))
    head = build_loss(cfg["loss"], int(cfg["embed_dim"]), meta["num_classes"])
    opt = build_optimizer(list(enc.parameters()) + list(head.parameters()), cfg["optimizer"])
    build_scheduler(opt, cfg["scheduler"], epochs=int(cfg["trainer"]["epochs"]), steps_per_epoch=1)
    resolve_amp(cfg["trainer"].get("amp"), torch.device("cpu"))


def make_trainer(
    cfg: dict[str, Any],
    *,
    storage_path: str,
    name: str,
    callbacks: list | None = None,
    max_failures: int = 2,
):
    """A ``TorchTrainer`` for one trial; ``fit()`` runs it. ``callbacks`` are Ray Train
    ``UserCallback`` objects (e.g. Tune's ``TuneReportCallback`` inside a Tune trial)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = resolved(cfg)
    check_config(cfg)
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    meta, dataset = prepare(cfg)
    _dry_build(cfg, meta)
    meta["run_dir"] = _local_run_dir(storage_path, name)
    meta["storage_uri"] = f"{storage_path.rstrip('/')}/{name}"
    keep = int(cfg["trainer"].get("checkpoints_to_keep", 2))
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=FailureConfig(max_failures=max_failures),
        # Ray keeps the latest checkpoint too (for resuming), besides the best ``keep``.
        checkpoint_config=CheckpointConfig(
            num_to_keep=keep, checkpoint_score_attribute="val_eer", checkpoint_score_order="min"
        ),
        callbacks=list(callbacks or []),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "meta": meta},
        torch_config=TorchConfig(backend="nccl" if cfg["trainer"].get("use_gpu") else "gloo"),
        scaling_config=_scaling_config(cfg),
        run_config=run_config,
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def train(cfg: dict[str, Any], *, storage_path: str = "runs", name: str | None = None) -> dict:
    """Fit one configuration; returns the last reported metrics plus ``checkpoint`` (path of
    the latest checkpoint), ``best_checkpoint`` and ``run_dir``."""
    name = name or time.strftime("train_%Y%m%d_%H%M%S")
    from ray.train import TrainingFailedError

    try:
        result = make_trainer(cfg, storage_path=storage_path, name=name).fit()
    except TrainingFailedError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainerError(f"training run {name!r} failed: {first}") from exc
    out = dict(result.metrics or {})
    out["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    best = result.get_best_checkpoint("val_eer", "min") if result.checkpoint else None
    out["best_checkpoint"] = best.path if best else None
    out["run_dir"] = result.path
    out["history"] = read_history(result.path) if "://" not in storage_path else []
    return out


# ---------------------------------------------------------------------------- worker side


class SpeakerNet(nn.Module):
    """Encoder + loss head in one module so that DDP synchronises both."""

    def __init__(self, encoder: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss

    def forward(self, feats: torch.Tensor, labels: torch.Tensor):
        return self.loss(self.encoder(feats), labels)


class _Dist:
    """The few collectives the loop needs; all no-ops for a single worker."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.device = device

    def all_true(self, flag: bool) -> bool:
        if not self.on:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank. Each rank updates
        its own statistics with its own last batches, and DDP only re-syncs them at the next
        forward: without this, workers would validate with different encoders, none of them
        the one rank 0 checkpoints."""
        if self.on:
            for buf in module.buffers():
                self.dist.broadcast(buf.data, src=0)

    def broadcast(self, obj: Any) -> Any:
        if not self.on:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


class SpeakerBatcher:
    """Regroups streamed rows into N speakers x M utterances batches (speaker-major), the
    input end-to-end losses expect; rows left over at the end of an epoch are counted."""

    def __init__(self, n_speakers: int, m_utts: int, rng: np.random.Generator) -> None:
        self.n, self.m, self.rng = n_speakers, m_utts, rng
        self.pool: dict[int, list[np.ndarray]] = {}

    def add(self, feats: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        for f, y in zip(feats, labels):
            self.pool.setdefault(int(y), []).append(f)
        out = []
        while True:
            ready = sorted(k for k, v in self.pool.items() if len(v) >= self.m)
            if len(ready) < self.n:
                return out
            picked = self.rng.choice(ready, size=self.n, replace=False)
            rows, ys = [], []
            for k in picked:
                rows += [self.pool[int(k)].pop() for _ in range(self.m)]
                ys += [int(k)] * self.m
            out.append((np.stack(rows), np.asarray(ys, dtype=np.int64)))

    def leftover(self) -> int:
        return sum(len(v) for v in self.pool.values())


def _e2e_speakers(cfg: dict[str, Any], meta: dict[str, Any]) -> int:
    """N of the N x M batches, at most the number of training speakers."""
    return max(2, min(int(cfg["trainer"]["e2e_speakers"]), int(meta["num_train_speakers"])))


def _batches(shard, cfg: dict[str, Any], meta: dict[str, Any], end_to_end: bool,
             rng: np.random.Generator, stats: dict[str, int]):
    """Yield ``(feats [B, T, F], labels [B])`` tensors for one epoch, each batch cropped to one
    random length (random-length egs)."""
    from speakertune.frontend.pipeline import collate_random_crop, crop_frames

    t = cfg["trainer"]
    lo, hi = crop_frames(cfg)
    if end_to_end:
        batcher = SpeakerBatcher(_e2e_speakers(cfg, meta), int(t["e2e_utts"]), rng)
        for raw in shard.iter_batches(batch_size=int(t["batch_size"]), batch_format="numpy"):
            for feats, labels in batcher.add(raw["feats"], raw["label"]):
                yield collate_random_crop({"feats": feats, "label": labels}, lo, hi, rng)
        stats["unbatched_rows"] = batcher.leftover()
        return
    # drop_last: a one-row batch would break BatchNorm; the data is reshuffled every epoch.
    for raw in shard.iter_batches(batch_size=int(t["batch_size"]), batch_format="numpy",
                                  drop_last=True):
        yield collate_random_crop(raw, lo, hi, rng)


def _steps_per_epoch(cfg: dict[str, Any], meta: dict[str, Any], world: int) -> int:
    t = cfg["trainer"]
    per_worker = meta["num_train"] // max(1, world)
    per_batch = int(t["batch_size"])
    return max(1, per_worker // per_batch)


def _pop_skipped(meta: dict[str, Any]):
    """This epoch's utterances the front end could not decode (kept by its ``SkipCounter``)."""
    counter = meta.get("skip_counter")
    return counter.pop() if counter is not None else None


def _inject_failure(cfg: dict[str, Any], meta: dict[str, Any], epoch: int, rank: int,
                    world: int, since_report_s: float) -> None:
    """Test hook: ``trainer.fail_at_epoch`` kills the last worker once, after the first step of
    that (1-based) epoch; a marker file makes it happen only once across restarts."""
    at = cfg["trainer"].get("fail_at_epoch")
    if not at or epoch + 1 != int(at) or rank != world - 1:
        return
    marker = Path(cfg["trainer"].get("fail_marker") or Path(meta["run_dir"]) / ".fail_injected")
    if marker.exists():
        return
    # Ray Train collects reports when it polls the workers (every 2 s by default): die only
    # after the previous epoch's checkpoint has surely been registered, as a real crash would.
    time.sleep(max(0.0, 5.0 - since_report_s))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker rank {rank} killed in epoch {epoch + 1}\n")
    os._exit(17)  # a hard crash, as when a node dies: no exception, no cleanup


class _Progress:
    """One line per epoch on stdout and in ``<run dir>/progress.log``, and each epoch's metrics
    as a JSON line in ``<run dir>/history.jsonl`` (rank 0 only)."""

    def __init__(self, run_dir: str | None) -> None:
        self.dir = Path(run_dir) if run_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        # Not print(): Ray Train patches it in workers to log *and* echo to the wrapped stdout,
        # so each line reached the driver twice.
        sys.stdout.write(f"[speakertune] {line}\n")
        sys.stdout.flush()
        if self.dir:
            with open(self.dir / "progress.log", "a") as fh:
                fh.write(line + "\n")

    def record(self, metrics: dict[str, Any]) -> None:
        if self.dir:
            with open(self.dir / "history.jsonl", "a") as fh:
                fh.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run, in order (a resumed epoch appears once, its last report)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _load_validation_cache(cfg, meta, rank: int, world: int):
    from speakertune.train.validation import load_eval_features

    max_s = cfg["trainer"].get("val_max_seconds", 6.0)
    opts = meta["storage_options"]
    parts = {}
    for key in ("val", "plda"):
        df = pd.DataFrame(meta[key]).iloc[rank::world]
        parts[key] = load_eval_features(df, cfg, storage_options=opts, max_seconds=max_s)
    return parts


def _validate(net: SpeakerNet, cache, cfg, meta, dist: _Dist, rank: int, device, amp_ctx):
    """Embeddings on every worker, scoring on rank 0; every rank returns the same metrics."""
    from speakertune.train.validation import embed_features, score_backends

    local = {
        key: embed_features(net.encoder, part.feats, device=device, autocast=amp_ctx())
        for key, part in cache.items()
    }
    skipped = {key: part.skipped for key, part in cache.items()}
    gathered = dist.gather((local, skipped))
    result = None
    if rank == 0:
        val_emb, train_emb, bad = {}, {}, {}
        for emb, skip in gathered:
            val_emb.update(emb["val"])
            train_emb.update(emb["plda"])
            bad.update(skip["val"])
            bad.update(skip["plda"])
        spk = dict(zip(meta["plda"]["utt"], meta["plda"]["spk"]))
        trials = pd.DataFrame(meta["trials"])
        result = score_backends(train_emb, spk, val_emb, trials, cfg["backend"],
                                cfg["trainer"].get("val_backend", "best"))
        result.metrics["val_skipped_utterances"] = len(bad)
        result.metrics["val_dropped_trials"] = result.dropped_trials
    metrics = dist.broadcast(result.metrics if result is not None else None)
    return metrics, result


def run_epoch(
    model: nn.Module,
    net: SpeakerNet,
    batches,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    amp: str,
    device: torch.device,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    margin_warmup: float = 0.0,
    clip: float = 0.0,
    dist: _Dist | None = None,
    after_first_step=None,
) -> dict[str, Any]:
    """Train on ``batches`` (``(feats, labels)`` tensors) for one epoch; ``model`` is ``net``
    itself or its DDP wrapper. Returns this worker's sums: loss_sum, correct, count, steps."""
    from speakertune.models import apply_constraints
    from speakertune.train.optim import margin_factor
    from speakertune.train.precision import autocast

    dist = dist or _Dist(device)
    net.train()
    loss_sum = correct = count = 0.0
    acc_seen, step = True, 0
    batches = iter(batches)
    while True:
        item = next(batches, None)
        if not dist.all_true(item is not None):  # stop together: DDP needs equal step counts
            break
        feats, labels = item[0].to(device, non_blocking=True), item[1].to(device)
        net.loss.set_margin_factor(margin_factor(epoch + step / steps_per_epoch, margin_warmup))
        with autocast(amp, device):
            value, acc = model(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        if clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        apply_constraints(net.encoder)
        if scheduler.last_epoch < total_steps:  # the step count per epoch is an estimate
            scheduler.step()
        n = labels.shape[0]
        loss_sum += float(value.detach()) * n
        if acc is None:
            acc_seen = False
        else:
            correct += float(acc) * n
        count += n
        step += 1
        if step == 1 and after_first_step is not None:
            after_first_step()
    return {"loss_sum": loss_sum, "correct": correct, "count": count, "steps": step,
            "acc_seen": acc_seen}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (runs on every worker)."""
    import ray.train
    import ray.train.torch

    from speakertune.checkpoint import load_checkpoint, save_checkpoint, save_val_scores
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder, count_parameters
    from speakertune.redact import install as install_redaction
    from speakertune.train.optim import build_optimizer, build_scheduler, margin_factor
    from speakertune.train.precision import autocast, grad_scaler, resolve_amp

    install_redaction()  # worker processes have their own log handlers
    cfg, meta = config["cfg"], config["meta"]
    t = cfg["trainer"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # One intra-op thread per reserved CPU: several workers share a node's cores.
    torch.set_num_threads(max(1, int(float(t["cpus_per_worker"]))))
    seed = int(t.get("seed", 0))
    torch.manual_seed(seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    show = _Progress(meta.get("run_dir")) if rank == 0 else None

    encoder = build_encoder(cfg["model"], cfg["pooling"], meta["feat_dim"], int(cfg["embed_dim"]))
    loss = build_loss(cfg["loss"], int(cfg["embed_dim"]), meta["num_classes"])
    net = SpeakerNet(encoder, loss).to(device)
    num_params = count_parameters(encoder)
    end_to_end = bool(getattr(loss, "end_to_end", False))
    epochs = int(t["epochs"])
    steps = _steps_per_epoch(cfg, meta, world)
    if end_to_end:
        per_batch = _e2e_speakers(cfg, meta) * int(t["e2e_utts"])
        steps = max(1, meta["num_train"] // max(1, world) // per_batch)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"], epochs=epochs, steps_per_epoch=steps)
    amp = resolve_amp(t.get("amp", "off"), device)
    scaler = grad_scaler(amp, device)

    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            loaded = load_checkpoint(d, map_location=device)
            encoder.load_state_dict(loaded.encoder.state_dict())
            if loaded.loss_state:
                loss.load_state_dict(loaded.loss_state)
            state = loaded.train_state or {}
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        if show:
            show(f"resumed from checkpoint after epoch {start_epoch}")

    model = ray.train.torch.prepare_model(net, move_to_device=False)
    dist = _Dist(device)
    t0 = time.perf_counter()
    cache = _load_validation_cache(cfg, meta, rank, world)
    if show:
        show(f"validation features cached in {time.perf_counter() - t0:.1f} s "
             f"({world} worker(s), {num_params:,} encoder parameters, amp={amp})")

    mw = float(cfg["scheduler"].get("margin_warmup_epochs", 0) or 0)
    clip = float(t.get("grad_clip") or 0)
    total_steps = epochs * steps
    log = None
    if rank == 0 and meta.get("run_dir"):
        from speakertune.train.tensorboard import TrialLog

        log = TrialLog(Path(meta["run_dir"]) / "tensorboard")

    last_report = time.monotonic()
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([seed, epoch, rank])  # same crops after a resume
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        data_stats: dict[str, int] = {}
        shard = ray.train.get_dataset_shard("train")
        batches = _batches(shard, cfg, meta, end_to_end, rng, data_stats)
        since = time.monotonic() - last_report

        def first_step(epoch=epoch, since=since) -> None:
            _inject_failure(cfg, meta, epoch, rank, world, since)

        stats = run_epoch(model, net, batches, optimizer=optimizer, scheduler=scheduler,
                          scaler=scaler, amp=amp, device=device, dist=dist, epoch=epoch,
                          steps_per_epoch=steps, total_steps=total_steps, margin_warmup=mw,
                          clip=clip, after_first_step=first_step)
        loss_sum, correct, count = stats["loss_sum"], stats["correct"], stats["count"]
        acc_seen, step = stats["acc_seen"], stats["steps"]
        loss_sum, correct, count = dist.sum([loss_sum, correct, count])
        # Every worker has finished its shard (dist.sum is a barrier): collect this epoch's skips.
        skips = _pop_skipped(meta) if rank == 0 else None
        if skips is not None and skips.count:
            show(str(skips))
        n_skipped = dist.broadcast(skips.count if skips is not None else 0)
        dist.sync_buffers(net)
        metrics, result = _validate(net, cache, cfg, meta, dist, rank, device,
                                    lambda: autocast(amp, device))
        metrics.update(
            epoch=epoch + 1,
            train_loss=loss_sum / count if count else float("nan"),
            train_acc=correct / count if count and acc_seen else float("nan"),
            lr=float(optimizer.param_groups[0]["lr"]),
            margin_factor=margin_factor(epoch + 1, mw),
            num_params=num_params,
            skipped_utterances=int(n_skipped),
            train_steps=step,
            epoch_time_s=time.perf_counter() - t_epoch,
        )
        if device.type == "cuda":  # this worker's peak over training and validation
            metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if end_to_end:
            left = dist.sum([float(data_stats.get("unbatched_rows", 0))])[0]
            metrics["unbatched_rows"] = int(left)  # rows an epoch could not fit into N x M
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            last_report = time.monotonic()
            continue
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "seed": seed,
        }
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, encoder=net.encoder, loss=net.loss, cfg=cfg,
                            num_classes=meta["num_classes"], feat_dim=meta["feat_dim"],
                            backends=result.backends, train_state=train_state, metrics=metrics)
            save_val_scores(tmp, result.scores, result.labels)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}")
        last_report = time.monotonic()
        show.record(metrics)
        show(f"epoch {epoch + 1}/{epochs}  loss {metrics['train_loss']:.3f}  "
             f"acc {metrics['train_acc']:.3f}  lr {metrics['lr']:.2e}  "
             f"EER cosine {100 * metrics['val_eer_cosine']:.2f}%  "
             f"plda {100 * metrics['val_eer_plda']:.2f}%  "
             f"({metrics['epoch_time_s']:.1f} s, {step} steps/worker)")
        if log:
            log.log_epoch(metrics, epoch + 1)
            if epoch + 1 == epochs:
                systems = {f"{k} (EER {100 * metrics[f'val_eer_{k}']:.1f}%)": (s, result.labels)
                           for k, s in result.scores.items()}
                log.log_det(systems, Path(meta["run_dir"]) / "det.png", epoch + 1)


def check_config(cfg: dict[str, Any]) -> None:
    """Fail fast (before Ray starts) on trainer settings that cannot work."""
    t = resolved(cfg)["trainer"]
    for key in ("epochs", "batch_size", "num_workers"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}: must be >= 1, got {t[key]}")
    if t.get("val_backend", "best") not in ("best", "cosine", "plda"):
        raise ConfigError(f"trainer.val_backend: {t['val_backend']!r} is not best, cosine or plda")
    if math.isnan(float(t.get("grad_clip") or 0)):
        raise ConfigError("trainer.grad_clip: must be a number")
