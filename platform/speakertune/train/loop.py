"""The training step: the model trained (encoder + loss head), one epoch's batches from a
worker's streamed shard, and ``run_epoch`` (autocast, grad scaling, clipping, LR schedule,
margin warm-up). No Ray here: a benchmark can run an epoch in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from speakertune.train.distributed import Dist


class SpeakerNet(nn.Module):
    """Encoder + loss head in one module so that DDP synchronises both."""

    def __init__(self, encoder: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss

    def forward(self, feats: torch.Tensor, labels: torch.Tensor):
        return self.loss(self.encoder(feats), labels)


def e2e_speakers(cfg: dict[str, Any], meta: dict[str, Any]) -> int:
    """N of the N x M batches, at most the number of training speakers."""
    return max(2, min(int(cfg["trainer"]["e2e_speakers"]), int(meta["num_train_speakers"])))


def steps_per_epoch(cfg: dict[str, Any], meta: dict[str, Any], world: int,
                    end_to_end: bool) -> int:
    """Optimiser steps one worker takes per epoch: sizes the LR schedule. An estimate, since
    shards are not exactly equal and N x M batching leaves rows over."""
    t = cfg["trainer"]
    if end_to_end:
        per_batch = e2e_speakers(cfg, meta) * int(t["e2e_utts"])
    else:
        per_batch = int(t["batch_size"])
    return max(1, meta["num_train"] // max(1, world) // per_batch)


def epoch_batches(shard, cfg: dict[str, Any], meta: dict[str, Any], end_to_end: bool,
                  rng: np.random.Generator,
                  stats: dict[str, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(feats [B, T, F], labels [B])`` tensors for one epoch of ``shard``, each batch
    cropped to one random length (random-length egs). End-to-end losses get N x M batches and
    ``stats["unbatched_rows"]`` counts the rows left over once the shard is exhausted."""
    from speakertune.frontend.pipeline import collate_random_crop, crop_frames
    from speakertune.losses import SpeakerBatcher

    t = cfg["trainer"]
    lo, hi = crop_frames(cfg)
    if end_to_end:
        batcher = SpeakerBatcher(e2e_speakers(cfg, meta), int(t["e2e_utts"]), rng)
        for raw in shard.iter_batches(batch_size=int(t["batch_size"]), batch_format="numpy"):
            for feats, labels in batcher.add(raw["feats"], raw["label"]):
                yield collate_random_crop({"feats": feats, "label": labels}, lo, hi, rng)
        stats["unbatched_rows"] = batcher.leftover()
        return
    # drop_last: a one-row batch would break BatchNorm; the data is reshuffled every epoch.
    for raw in shard.iter_batches(batch_size=int(t["batch_size"]), batch_format="numpy",
                                  drop_last=True):
        yield collate_random_crop(raw, lo, hi, rng)


def run_epoch(
    model: nn.Module,
    net: SpeakerNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    amp: str,
    device: torch.device,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    margin_warmup: float = 0.0,
    clip: float = 0.0,
    dist: Dist | None = None,
    after_first_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train on ``batches`` (``(feats, labels)`` tensors) for one epoch; ``model`` is ``net``
    itself or its DDP wrapper. Returns this worker's sums: loss_sum, correct, count, steps,
    and its seconds ``data_wait_s`` spent waiting for the next batch out of ``loop_s``.

    Data wait is timed with ``time.perf_counter`` around ``next(batches)`` only (two clock
    reads per step). On CUDA no extra synchronisation is needed: ``float(loss)`` below already
    waits for each step's kernels, so a wait cannot hide queued GPU work."""
    from speakertune.train.optim import margin_factor
    from speakertune.train.precision import autocast

    dist = dist or Dist(device)
    net.train()
    loss_sum = correct = count = 0.0
    acc_seen, step = True, 0
    wait = 0.0
    batches = iter(batches)
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        item = next(batches, None)
        wait += time.perf_counter() - t0
        if not dist.all_true(item is not None):  # stop together: DDP needs equal step counts
            break
        feats, labels = item[0].to(device, non_blocking=True), item[1].to(device)
        net.loss.set_margin_factor(margin_factor(epoch + step / steps_per_epoch, margin_warmup))
        with autocast(amp, device):
            value, acc = model(feats, labels)
        _optimise(net, value, optimizer, scaler, clip)
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
            "acc_seen": acc_seen, "data_wait_s": wait, "loop_s": time.perf_counter() - start}


def throughput(sums: dict[str, float], world: int) -> dict[str, float]:
    """``data_wait_frac`` (share of the training loop's wall time spent waiting for batches,
    over all workers) and ``utterances_per_s`` (all workers together) from ``run_epoch``'s
    ``data_wait_s``/``loop_s``/``count`` summed over the ``world`` workers."""
    loop = float(sums["loop_s"])
    return {
        "data_wait_frac": float(sums["data_wait_s"]) / loop if loop > 0 else float("nan"),
        "utterances_per_s": float(sums["count"]) * world / loop if loop > 0 else float("nan"),
    }


def _optimise(net: SpeakerNet, value: torch.Tensor, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, clip: float) -> None:
    """Backward pass of ``value``, optional gradient clipping, optimiser step, then the
    encoder's weight constraints."""
    from speakertune.models import apply_constraints

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(value).backward()
    if clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        nn.utils.clip_grad_norm_(net.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    apply_constraints(net.encoder)
