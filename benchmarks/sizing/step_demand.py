"""Demand side of benchmarks/sizing/supply_demand.py: crops/s one train worker consumes, from the
trainer's own step on random features of a config's random-length crops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def step_rate(cfg: dict[str, Any], device: torch.device, amp: str, steps: int,
              num_classes: int = 1000) -> float:  # fmt: skip
    """Crops/s of the trainer's step (``run_epoch``: autocast, clipping, optimiser, schedule)
    on random features of the config's random-length crops, batch ``trainer.batch_size``;
    an AAM-softmax head over ``num_classes`` (the head costs little next to the encoder)."""
    from speakertune.frontend.features import feature_dim
    from speakertune.frontend.pipeline import crop_frames
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder
    from speakertune.train.loop import SpeakerNet, run_epoch
    from speakertune.train.optim import build_optimizer, build_scheduler
    from speakertune.train.precision import grad_scaler, resolve_amp

    torch.manual_seed(0)
    dim, (lo, hi), bs = feature_dim(cfg), crop_frames(cfg), int(cfg["trainer"]["batch_size"])
    enc = build_encoder(cfg["model"], cfg["pooling"], dim, int(cfg["embed_dim"]))
    loss = build_loss({"name": "aam_softmax", "margin": 0.2, "scale": 30.0},
                      int(cfg["embed_dim"]), num_classes)  # fmt: skip
    net = SpeakerNet(enc, loss).to(device)
    opt = build_optimizer(net.parameters(), cfg["optimizer"])
    sched = build_scheduler(opt, cfg["scheduler"], epochs=1, steps_per_epoch=steps + 1)
    mode = resolve_amp(amp, device)
    scaler, rng = grad_scaler(mode, device), np.random.default_rng(0)

    def batches(k: int):
        for _ in range(k):
            t = int(rng.integers(lo, hi + 1))
            yield (torch.randn(bs, t, dim, device=device),
                   torch.randint(0, num_classes, (bs,), device=device))  # fmt: skip

    def run(k: int) -> dict[str, Any]:
        return run_epoch(net, net, batches(k), optimizer=opt, scheduler=sched, scaler=scaler,
                         amp=mode, device=device, epoch=0, steps_per_epoch=steps + 1,
                         total_steps=steps + 1, clip=5.0)  # fmt: skip

    run(1)  # warm-up: allocation, kernel selection
    stats = run(steps)
    return stats["count"] / stats["loop_s"]


def demand(step: float, frontend: float) -> dict[str, float]:
    """Crops/s one train worker consumes: ``cpu`` mode (the step only) and ``worker`` mode
    (the same device also runs the batch front end at ``frontend`` crops/s)."""
    return {"cpu": step, "worker": 1.0 / (1.0 / step + 1.0 / frontend)}
