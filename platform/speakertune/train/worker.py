"""The Ray Train worker function: every worker trains on its streamed shard, then validates on
the held-out speakers with cosine and PLDA scoring and reports metrics with a checkpoint (rank 0
writes it). A restarted worker group resumes from the latest checkpoint at the next epoch.

``train_loop_per_worker`` reads as its steps: build, resume, cache the validation features,
then per epoch train -> validate -> checkpoint and report. The config arrives merged over the
defaults (``driver.make_trainer``), so trainer keys are read without fallbacks.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from speakertune.metric_keys import REPORTED
from speakertune.train import credentials
from speakertune.train.distributed import Dist
from speakertune.train.loop import SpeakerNet, epoch_batches, run_epoch, steps_per_epoch
from speakertune.train.metrics import export_epoch
from speakertune.train.progress import Progress, TrialLog
from speakertune.train.restore import resume

REPORT_KEYS = REPORTED
# Reported with every epoch: the id of this worker group's placement group, so that a sweep
# can release exactly its own groups when Tune stops a trial (``search.ray_runtime``).
PG_METRIC = "train_placement_group"
# The Ray node this rank-0 worker ran the epoch on (in Tune's results and history.jsonl): shows
# where a trial ran and where it resumed after losing a node.
NODE_METRIC = "train_node_id"


@dataclass
class _Worker:
    """What one worker holds for the whole run."""

    cfg: dict[str, Any]
    meta: dict[str, Any]
    rank: int
    world: int
    device: torch.device
    net: SpeakerNet
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp: str
    steps: int  # optimiser steps per epoch (estimate; sizes the schedule)
    cost: dict[str, int]  # num_params and macs of the encoder (models.cost)
    show: Progress | None  # rank 0 only
    model: nn.Module | None = None  # ``net`` wrapped for DDP, once resumed
    frontend: Any = None  # BatchFrontEnd when this worker augments and featurises on its device
    last_report: float = 0.0  # time.monotonic() of the last ray.train.report
    latency_ms: float | None = None  # embedding latency (search objective), measured once

    @property
    def epochs(self) -> int:
        return int(self.cfg["trainer"]["epochs"])

    @property
    def seed(self) -> int:
        return int(self.cfg["trainer"]["seed"])

    @property
    def end_to_end(self) -> bool:
        return bool(getattr(self.net.loss, "end_to_end", False))

    @property
    def margin_warmup(self) -> float:
        # ``scheduler`` is a component section: a config naming its own scheduler replaces the
        # defaults wholesale, so this key may be absent even from a merged config.
        return float(self.cfg["scheduler"].get("margin_warmup_epochs", 0) or 0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (runs on every worker)."""
    from speakertune.quiet import silence_train_worker
    from speakertune.redact import install as install_redaction

    install_redaction()  # worker processes have their own log handlers
    silence_train_worker()  # Ray's deprecations and INFO lines, unless the sweep is --verbose
    w = _build(*credentials.unseal(config["cfg"], config["meta"]))
    start_epoch = resume(w)
    w.model = _prepare_ddp(w.net)
    cache = _load_validation_cache(w)
    log = _tensorboard(w)
    dist = Dist(w.device)
    w.last_report = time.monotonic()
    for epoch in range(start_epoch, w.epochs):
        t0 = time.perf_counter()
        stats = _train_epoch(w, dist, epoch)
        metrics, result = _validate(w, dist, cache)
        metrics.update(_epoch_metrics(w, epoch, stats, t0))
        metrics["latency_ms"] = _latency_ms(w, dist)
        _report(w, epoch, metrics, result)
        if log:
            _log_epoch(w, log, epoch, metrics, result)


# ---------------------------------------------------------------------------- setup


def _build(cfg: dict[str, Any], meta: dict[str, Any]) -> _Worker:
    """Model, loss head, optimiser, schedule and grad scaler on this worker's device."""
    import ray.train
    import ray.train.torch

    from speakertune.frontend.features import num_frames
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder
    from speakertune.models.cost import MACS_SECONDS, encoder_cost
    from speakertune.train.optim import build_optimizer, build_scheduler
    from speakertune.train.precision import grad_scaler, resolve_amp

    t = cfg["trainer"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # One intra-op thread per reserved CPU: several workers share a node's cores.
    torch.set_num_threads(max(1, int(float(t["cpus_per_worker"]))))
    torch.manual_seed(int(t["seed"]))  # same initial weights everywhere (DDP also broadcasts)
    sr = int(cfg["data"]["sample_rate"])
    encoder = build_encoder(cfg["model"], cfg["pooling"], meta["feat_dim"], int(cfg["embed_dim"]))
    cost = encoder_cost(encoder, num_frames(int(MACS_SECONDS * sr), sr, cfg))  # on CPU: copies
    loss = build_loss(cfg["loss"], int(cfg["embed_dim"]), meta["num_classes"])
    net = SpeakerNet(encoder, loss).to(device)
    steps = steps_per_epoch(cfg, meta, world, bool(getattr(loss, "end_to_end", False)))
    optimizer = build_optimizer(net, cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"], epochs=int(t["epochs"]),
                                steps_per_epoch=steps)
    amp = resolve_amp(t["amp"], device)
    return _Worker(
        cfg=cfg, meta=meta, rank=rank, world=world, device=device, net=net,
        optimizer=optimizer, scheduler=scheduler, scaler=grad_scaler(amp, device), amp=amp,
        steps=steps, cost=cost,
        show=Progress(meta.get("run_dir")) if rank == 0 else None,
        frontend=_frontend(meta, device),
    )


def _frontend(meta: dict[str, Any], device: torch.device) -> Any:
    """The batch front end (augmentation + features on ``device``) when the stream is raw."""
    spec = meta.get("frontend")
    if spec is None:
        return None
    from speakertune.frontend.stream import worker_frontend

    return worker_frontend(spec, device)


class _OnDevice:
    """A dataset shard whose raw batches (int16 crops + plans) come out as ``feats, label`` made
    by the worker's batch front end: on its device, or as numpy for host-side batchers."""

    def __init__(self, shard: Any, frontend: Any, to_numpy: bool) -> None:
        self.shard, self.frontend, self.to_numpy = shard, frontend, to_numpy

    def iter_batches(self, **kwargs: Any):
        for raw in self.shard.iter_batches(**kwargs):
            feats = self.frontend(raw)
            yield {"feats": feats.cpu().numpy() if self.to_numpy else feats,
                   "label": raw["label"]}  # fmt: skip


def _prepare_ddp(net: SpeakerNet) -> nn.Module:
    import ray.train.torch

    return ray.train.torch.prepare_model(net, move_to_device=False)


def _load_validation_cache(w: _Worker) -> dict[str, Any]:
    """Features of this worker's share of the validation and PLDA-fit utterances, computed once
    for the whole run (only the encoder changes between epochs)."""
    from speakertune.scoring.feature_cache import cached_features

    t0 = time.perf_counter()
    max_s = w.cfg["trainer"]["val_max_seconds"]
    opts = w.meta["storage_options"]
    cache, hits = {}, 0
    for key in ("val", "plda"):
        df = pd.DataFrame(w.meta[key]).iloc[w.rank::w.world]
        cache[key], hit = cached_features(df, w.cfg, w.meta.get("feature_cache"),
                                          storage_options=opts, max_seconds=max_s)
        hits += hit
    if w.show:
        read = " (from the feature cache)" if hits == 2 else ""
        w.show(f"validation features cached in {time.perf_counter() - t0:.1f} s{read} "
               f"({w.world} worker(s), {w.cost['num_params']:,} encoder parameters, "
               f"{w.cost['macs'] / 1e9:.2f} GMACs per 2 s, amp={w.amp})")
    return cache


def _tensorboard(w: _Worker) -> TrialLog | None:
    if w.rank == 0 and w.meta.get("run_dir"):
        return TrialLog(w.meta["run_dir"])
    return None


# ---------------------------------------------------------------------------- per epoch


def _train_epoch(w: _Worker, dist: Dist, epoch: int) -> dict[str, Any]:
    """One pass over this worker's shard; sums are over all workers, ``steps`` is this one's."""
    import ray.train

    rng = np.random.default_rng([w.seed, epoch, w.rank])  # same crops after a resume
    if w.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(w.device)
    data_stats: dict[str, int] = {}
    shard = ray.train.get_dataset_shard("train")
    if w.frontend is not None:  # augmentation and features on this worker's device
        shard = _OnDevice(shard, w.frontend, to_numpy=w.end_to_end)
    batches = epoch_batches(shard, w.cfg, w.meta, w.end_to_end, rng, data_stats)
    since = time.monotonic() - w.last_report

    def first_step() -> None:
        _inject_failure(w.cfg, w.meta, epoch, w.rank, w.world, since)

    stats = run_epoch(w.model, w.net, batches, optimizer=w.optimizer, scheduler=w.scheduler,
                      scaler=w.scaler, amp=w.amp, device=w.device, dist=dist, epoch=epoch,
                      steps_per_epoch=w.steps, total_steps=w.epochs * w.steps,
                      margin_warmup=w.margin_warmup, clip=float(w.cfg["trainer"]["grad_clip"] or 0),
                      after_first_step=first_step)
    keys = ("loss_sum", "correct", "count", "unbatched_rows", "data_wait_s", "loop_s")
    local = [stats["loss_sum"], stats["correct"], stats["count"],
             float(data_stats.get("unbatched_rows", 0)), stats["data_wait_s"], stats["loop_s"]]
    stats.update(zip(keys, dist.sum(local)))
    # Every worker has finished its shard (dist.sum is a barrier): collect this epoch's skips.
    skips = _pop_skipped(w.meta) if w.rank == 0 else None
    if skips is not None and skips.count:
        w.show(str(skips))
    stats["skipped"] = int(dist.broadcast(skips.count if skips is not None else 0))
    dist.sync_buffers(w.net)
    return stats


def _pop_skipped(meta: dict[str, Any]):
    """This epoch's utterances the front end could not decode (kept by its ``SkipCounter``)."""
    counter = meta.get("skip_counter")
    return counter.pop() if counter is not None else None


def _inject_failure(cfg: dict[str, Any], meta: dict[str, Any], epoch: int, rank: int,
                    world: int, since_report_s: float) -> None:
    """Test hook: ``trainer.fail_at_epoch`` kills the last worker once, after the first step of
    that (1-based) epoch; a marker file makes it happen only once across restarts."""
    at = cfg["trainer"]["fail_at_epoch"]
    if not at or epoch + 1 != int(at) or rank != world - 1:
        return
    marker = Path(cfg["trainer"]["fail_marker"] or Path(meta["run_dir"]) / ".fail_injected")
    if marker.exists():
        return
    # Ray Train collects reports when it polls the workers (every 2 s by default): die only
    # after the previous epoch's checkpoint has surely been registered, as a real crash would.
    time.sleep(max(0.0, 5.0 - since_report_s))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker rank {rank} killed in epoch {epoch + 1}\n")
    os._exit(17)  # a hard crash, as when a node dies: no exception, no cleanup


def _validate(w: _Worker, dist: Dist, cache: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Embeddings on every worker, scoring on rank 0; every rank returns the same metrics
    (the scoring result itself only on rank 0)."""
    from speakertune.scoring.embed import embed_features
    from speakertune.train.precision import autocast

    local = {
        key: embed_features(w.net.encoder, part.feats, device=w.device,
                            autocast=autocast(w.amp, w.device))
        for key, part in cache.items()
    }
    skipped = {key: part.skipped for key, part in cache.items()}
    gathered = dist.gather((local, skipped))
    result = _score(w, gathered) if w.rank == 0 else None
    metrics = dist.broadcast(result.metrics if result is not None else None)
    return metrics, result


def _score(w: _Worker, gathered: list[tuple[dict, dict]]) -> Any:
    """Rank 0: fit the backends on the PLDA sample and score the validation trials."""
    from speakertune.scoring.verification import score_backends

    val_emb, train_emb, bad = {}, {}, {}
    for emb, skip in gathered:
        val_emb.update(emb["val"])
        train_emb.update(emb["plda"])
        bad.update(skip["val"])
        bad.update(skip["plda"])
    spk = dict(zip(w.meta["plda"]["utt"], w.meta["plda"]["spk"]))
    trials = pd.DataFrame(w.meta["trials"])
    val_spk = dict(zip(w.meta["val"]["utt"], w.meta["val"]["spk"]))
    result = score_backends(train_emb, spk, val_emb, trials, w.cfg["backend"],
                            w.cfg["trainer"]["val_backend"], val_spk)
    result.metrics["val_skipped_utterances"] = len(bad)
    result.metrics["val_dropped_trials"] = result.dropped_trials
    return result


def _epoch_metrics(w: _Worker, epoch: int, stats: dict[str, Any], t0: float) -> dict[str, Any]:
    """Training-side metrics of the epoch (the validation ones come from ``_validate``)."""
    from speakertune.train.loop import throughput
    from speakertune.train.optim import margin_factor

    loss_sum, correct, count = stats["loss_sum"], stats["correct"], stats["count"]
    metrics = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / count if count else float("nan"),
        "train_acc": correct / count if count and stats["acc_seen"] else float("nan"),
        "lr": float(w.optimizer.param_groups[0]["lr"]),
        "margin_factor": margin_factor(epoch + 1, w.margin_warmup),
        **w.cost,
        "skipped_utterances": stats["skipped"],
        "train_steps": stats["steps"],
        "train_utterances": int(count),
        "epoch_time_s": time.perf_counter() - t0,
        **throughput(stats, w.world),
    }
    if w.device.type == "cuda":  # this worker's peak over training and validation
        metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(w.device) / 2**20
    if w.end_to_end:
        metrics["unbatched_rows"] = int(stats["unbatched_rows"])  # rows no N x M batch took
    return metrics


def _latency_ms(w: _Worker, dist: Dist) -> float:
    """The ``latency_ms`` objective: rank 0 times the trained encoder once (it depends on the
    architecture, not the weights) and every rank reports the same number."""
    if w.latency_ms is None:
        from speakertune.scoring.latency import embedding_latency_ms

        mine = embedding_latency_ms(w.net.encoder, w.cfg) if w.rank == 0 else None
        w.latency_ms = float(dist.broadcast(mine))
    return w.latency_ms


def _report(w: _Worker, epoch: int, metrics: dict[str, Any], result: Any) -> None:
    """Report to Ray Train; rank 0 attaches the checkpoint and writes the progress files."""
    import ray.train

    node = ray.get_runtime_context().get_node_id()
    reported = {**metrics, PG_METRIC: _placement_group_id(), NODE_METRIC: node}
    if w.rank != 0:
        ray.train.report(reported, checkpoint=None)
        w.last_report = time.monotonic()
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_checkpoint(w, tmp, epoch, metrics, result)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}")
    w.last_report = time.monotonic()
    export_epoch(w.meta.get("metric_tags"), metrics)
    w.show.record({**metrics, NODE_METRIC: node})
    w.show(f"epoch {epoch + 1}/{w.epochs}  loss {metrics['train_loss']:.3f}  "
           f"acc {metrics['train_acc']:.3f}  lr {metrics['lr']:.2e}  "
           f"EER cosine {100 * metrics['val_eer_cosine']:.2f}%  "
           f"plda {100 * metrics['val_eer_plda']:.2f}%  "
           f"({metrics['epoch_time_s']:.1f} s, {metrics['train_steps']} steps/worker, "
           f"{metrics['utterances_per_s']:.0f} utt/s, "
           f"data wait {100 * metrics['data_wait_frac']:.0f}%)")


def _placement_group_id() -> str:
    """Hex id of the placement group this worker runs in ("" outside one)."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else ""


def _save_checkpoint(w: _Worker, path: str, epoch: int, metrics: dict[str, Any],
                     result: Any) -> None:
    """Model, backends, the epoch's trial scores and what resuming needs, into ``path``."""
    from speakertune.checkpoint import save_checkpoint, save_val_scores

    train_state = {
        "optimizer": w.optimizer.state_dict(),
        "scheduler": w.scheduler.state_dict(),
        "scaler": w.scaler.state_dict(),
        "epoch": epoch + 1,
        "seed": w.seed,
    }
    save_checkpoint(path, encoder=w.net.encoder, loss=w.net.loss, cfg=w.cfg,
                    num_classes=w.meta["num_classes"], feat_dim=w.meta["feat_dim"],
                    backends=result.backends, train_state=train_state, metrics=metrics)
    save_val_scores(path, result.scores, result.labels)


def _log_epoch(w: _Worker, log: TrialLog, epoch: int, metrics: dict[str, Any],
               result: Any) -> None:
    """TensorBoard scalars every epoch; the DET curves of the final model after the last."""
    log.log_epoch(metrics, epoch + 1)
    if epoch + 1 == w.epochs:
        systems = {f"{k} (EER {100 * metrics[f'val_eer_{k}']:.1f}%)": (s, result.labels)
                   for k, s in result.scores.items()}
        log.log_det(systems, epoch + 1)
