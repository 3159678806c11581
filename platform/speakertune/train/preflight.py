"""Pre-flight: what a trial checks before it trains, shared by ``train``, the sweep's trials
and ``sweep --check``, so that a check passing on the driver means the trial can start.

``check_config`` is a trial's start-up check (trainer keys, data keys, ranking backend, noise
and RIR banks); ``build_parts`` builds what each worker builds; ``dry_step`` runs one real
training step on a tiny CPU batch of synthetic audio, through the same front end, augmentation
banks, encoder, loss, optimiser and schedule a trial uses.

    >>> from speakertune.config import resolve
    >>> loss = dry_step(resolve({"model": {"name": "tdnn", "channels": 16, "out_channels": 32}}))
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from speakertune.config import DEFAULTS, ConfigError, deep_merge
from speakertune.data.corpus import check_data_keys
from speakertune.frontend.augment import num_classes_multiplier
from speakertune.frontend.banks import AugmentError, check_banks
from speakertune.frontend.features import feature_dim
from speakertune.frontend.pipeline import FrontEnd, collate_random_crop, crop_frames
from speakertune.losses import build_loss
from speakertune.models import build_encoder
from speakertune.models.ssl_backends import check_waveform_input
from speakertune.scoring.verification import check_val_backend
from speakertune.train.distributed import Dist
from speakertune.train.loop import SpeakerNet, run_epoch
from speakertune.train.optim import build_optimizer, build_scheduler
from speakertune.train.precision import grad_scaler, resolve_amp

AUGMENT_PROBS = ("noise_prob", "babble_prob", "reverb_prob", "speed_prob", "specaug_prob")


def check_config(cfg: dict[str, Any]) -> None:
    """A trial's start-up check: settings that cannot work fail here, in one line naming the
    key, before Ray starts (``train``) or before the trial trains (a sweep's trials)."""
    full = deep_merge(DEFAULTS, cfg or {})
    t = full["trainer"]
    for key in ("epochs", "batch_size", "num_workers"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}: must be >= 1, got {t[key]}")
    check_val_backend(t["val_backend"])
    check_data_keys(full["data"])
    check_waveform_input(full)
    if math.isnan(float(t["grad_clip"] or 0)):  # None means no clipping
        raise ConfigError("trainer.grad_clip: must be a number")
    try:
        check_banks(full)
    except AugmentError as exc:
        raise ConfigError(str(exc)) from None


def build_parts(cfg: dict[str, Any], feat_dim: int, num_classes: int, *, steps_per_epoch: int = 1,
                device: torch.device | None = None) -> tuple[SpeakerNet, Any, Any, str]:
    """``(net, optimizer, scheduler, amp)`` of a merged ``cfg``, as a worker builds them."""
    device = device or torch.device("cpu")
    dim = int(cfg["embed_dim"])
    net = SpeakerNet(build_encoder(cfg["model"], cfg["pooling"], feat_dim, dim),
                     build_loss(cfg["loss"], dim, num_classes)).to(device)  # fmt: skip
    optimizer = build_optimizer(net, cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"], epochs=int(cfg["trainer"]["epochs"]),
                                steps_per_epoch=steps_per_epoch)  # fmt: skip
    return net, optimizer, scheduler, resolve_amp(cfg["trainer"]["amp"], device)


def _labels(cfg: dict[str, Any], end_to_end: bool) -> np.ndarray:
    """Four speakers, one row each; or, for an end-to-end loss, 2 speakers x M utterances in
    the speaker-major order of ``losses.SpeakerBatcher``."""
    if end_to_end:
        return np.repeat(np.arange(2), max(2, int(cfg["trainer"]["e2e_utts"])))
    return np.arange(4)


def dry_step(cfg: dict[str, Any], seed: int = 0) -> float:
    """One training step of the merged ``cfg`` on CPU; returns the loss.

    Every augmentation the config turns on is applied to every row (so its bank is read and
    used), features come from the trial's own front end, and the step goes through
    ``run_epoch`` (autocast, scaler, clipping, schedule). Raises ``ConfigError`` when the loss
    is not finite; a bad option raises the builders' own one-line errors."""
    cfg = copy.deepcopy(cfg)
    cfg["frontend"] = {**(cfg.get("frontend") or {}), "device": "cpu"}
    aug = cfg["augment"]
    for key in AUGMENT_PROBS:
        if float(aug[key]) > 0:
            aug[key] = 1.0
    rng = np.random.default_rng(seed)
    speakers = 4  # the front end offsets a speed-perturbed copy's label by this many
    num_classes = speakers * int(num_classes_multiplier(cfg))
    net, optimizer, scheduler, amp = build_parts(cfg, int(feature_dim(cfg)), num_classes)
    labels = _labels(cfg, bool(getattr(net.loss, "end_to_end", False)))
    fe = FrontEnd(cfg, speakers, seed=seed, storage_options=cfg["data"].get("storage"))
    samples = int(float(cfg["data"]["max_seconds"]) * int(cfg["data"]["sample_rate"]))
    rows = [fe.process((0.1 * rng.standard_normal(samples)).astype(np.float32), int(y), rng)
            for y in labels]  # fmt: skip
    feats = np.stack([f for f, _ in rows])
    batch = collate_random_crop({"feats": feats, "label": np.array([y for _, y in rows])},
                                *crop_frames(cfg), rng)  # fmt: skip
    device = torch.device("cpu")
    sums = run_epoch(net, net, [batch], optimizer=optimizer, scheduler=scheduler,
                     scaler=grad_scaler(amp, device), amp=amp, device=device, epoch=0,
                     steps_per_epoch=1, total_steps=1, clip=float(cfg["trainer"]["grad_clip"] or 0),
                     dist=Dist(device))  # fmt: skip
    loss = sums["loss_sum"] / max(1.0, sums["count"])
    if not math.isfinite(loss):
        raise ConfigError(f"loss.name: {cfg['loss']['name']}: the first training step gave a "
                          f"loss of {loss}")
    return loss
