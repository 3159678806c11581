"""The batch front end: raw int16 crops + their random plans -> augmented features, on a device.

One implementation for both places it runs (``frontend.device``): a Ray Data CPU task applies
it to the utterances of its chunk; with ``worker``/``gpu`` (``auto`` on a GPU trainer) the task
only reads, decodes and crops, and the train worker applies it to whole batches on its device.

A raw batch is a dict of columns (numpy or torch), ``B`` rows: ``wave`` int16 ``[B, T]``
(zero-padded crops); ``speed`` int8 ``[B]``, ``Augmenter.speed_choice``'s k (0: none, else factor
``perturbed[k - 1]``; row b's crop holds ``crop_samples`` of that factor); the plan of
``Augmenter.draw`` (``rir``, ``snr``, ``noise_kind``, ``noise_idx [B, K]``, ``noise_off [B, K]``,
``masks [B, M, 2]``); and ``label``.

    >>> fe = BatchFrontEnd(cfg, Augmenter(cfg, noise, rir), torch.device("cuda"))
    >>> fe(raw).shape                                     # [B, max_frames, feature dim]
    torch.Size([128, 248, 80])
"""

from __future__ import annotations

import math
import socket
from typing import Any

import numpy as np
import torch

from speakertune.config import ConfigError
from speakertune.frontend.augment import (
    BABBLE,
    NOISE,
    Augmenter,
    add_noise,
    reverb,
    segments,
    spec_augment,
    speed_perturb,
    tile_to,
)
from speakertune.frontend.banks import AugmentError, BankCache
from speakertune.frontend.features import build_feature, num_frames

DEVICES = ("auto", "cpu", "worker", "gpu")
PLAN_KEYS = ("speed", "rir", "snr", "noise_kind", "noise_idx", "noise_off", "masks")


def frontend_mode(cfg: dict[str, Any]) -> str:
    """``cpu`` (features in the Ray Data tasks) or ``worker`` (on the train worker's device) for
    ``frontend.device``. Whether ``gpu`` has a GPU is for the worker to say (``check_device``):
    the driver runs on a CPU head, and an autoscaling cluster has no GPU before its first
    GPU node starts."""
    dev = str((cfg.get("frontend") or {}).get("device", "auto")).lower()
    use_gpu = bool(cfg["trainer"].get("use_gpu", False))
    if dev not in DEVICES:
        raise ConfigError(f"frontend.device: {dev!r} is not one of {', '.join(DEVICES)}")
    if dev == "gpu" and not use_gpu:
        raise ConfigError("frontend.device: gpu needs trainer.use_gpu: true")
    return "worker" if dev in ("worker", "gpu") or (dev == "auto" and use_gpu) else "cpu"


def check_device(cfg: dict[str, Any], device: torch.device) -> None:
    """On the train worker: ``frontend.device: gpu`` where this worker has no CUDA device is a
    one-line ``ConfigError`` naming the node (a broken driver, a CPU-only node)."""
    dev = str((cfg.get("frontend") or {}).get("device", "auto")).lower()
    if dev == "gpu" and device.type != "cuda":
        raise ConfigError(f"frontend.device: gpu, but the train worker on {socket.gethostname()} "
                          f"has no CUDA device (torch sees {torch.cuda.device_count()}; use "
                          "auto, cpu or worker)")


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    # Ray hands out read-only views; torch wants writable memory (copied only if read-only).
    return torch.from_numpy(np.require(x, requirements="W"))


def samples_for_frames(frames: int, sr: int, cfg: dict[str, Any]) -> int:
    feat = cfg.get("features", cfg)
    window = int(sr * feat.get("frame_length", 25.0) / 1000)
    shift = int(sr * feat.get("frame_shift", 10.0) / 1000)
    return window + (frames - 1) * shift


class BatchFrontEnd:
    """Speed perturbation, reverberation, noise/babble, features and SpecAugment of raw batches
    on ``device``; bank audio decoded once and kept (LRU, ``augment.bank_cache_mb``) there."""

    def __init__(self, cfg: dict[str, Any], augment: Augmenter, device: torch.device) -> None:
        self.aug = augment
        self.device = torch.device(device)
        self.sr = int(cfg["data"]["sample_rate"])
        self.feature = build_feature(cfg)
        self.max_frames = num_frames(int(float(cfg["data"]["max_seconds"]) * self.sr),
                                     self.sr, cfg)  # fmt: skip
        self.samples = samples_for_frames(self.max_frames, self.sr, cfg)
        self.rirs = set(augment.rir_uris)
        self.banks = BankCache(self._load, augment.cache_mb)

    def crop_samples(self, factor: float) -> int:
        """Samples to crop so that, sped up by ``factor``, the crop still fills ``samples``."""
        return self.samples if factor == 1.0 else math.ceil(self.samples * factor) + 1

    def factor(self, k: int) -> float:
        """The exact speed factor of ``speed_choice``'s ``k`` (a float32 0.9 would resample
        14399 -> 16000 Hz: a 16000-tap kernel instead of 9 -> 10)."""
        return 1.0 if k == 0 else self.aug.perturbed[k - 1]

    def max_crop(self) -> int:
        return max(self.crop_samples(f) for f in [1.0, *self.aug.perturbed])

    def _load(self, uri: str) -> torch.Tensor:
        from speakertune.data.audio import load_audio

        x = torch.from_numpy(load_audio(uri, self.sr, self.aug.storage_options))
        if uri in self.rirs and not bool(x.any()):
            raise AugmentError(f"{uri}: RIR is silent")
        return x.to(self.device)

    def _bank(self, uris: list[str], idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The distinct bank items ``idx`` names, and ``idx`` renumbered into that list."""
        used, which = torch.unique(idx, return_inverse=True)
        return [self.banks[uris[int(i)]] for i in used.tolist()], which

    def __call__(self, raw: dict[str, Any]) -> torch.Tensor:
        """Raw batch -> ``feats[B, max_frames, dim]`` float32 on ``self.device``."""
        col = {k: _tensor(raw[k]).to(self.device) for k in ("wave", *PLAN_KEYS)}
        wave = col["wave"].float() / 32768.0
        x = torch.empty(wave.shape[0], self.samples, device=self.device)
        for k in torch.unique(col["speed"]).tolist():  # one resampling per speed factor
            rows = col["speed"] == k
            f = self.factor(int(k))
            crop = wave[rows, : self.crop_samples(f)]
            x[rows] = tile_to(speed_perturb(crop, self.sr, f), self.samples)
        x = self._augment(x, col)
        feats = self.feature.batch(x, self.sr)
        return spec_augment(feats, col["masks"], self.aug.specaug["freq_masks"])

    def _augment(self, x: torch.Tensor, col: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reverberation, then additive noise or babble (the order of a real recording)."""
        rows = torch.nonzero(col["rir"] >= 0).flatten()
        if len(rows):
            items, which = self._bank(self.aug.rir_uris, col["rir"][rows])
            x[rows] = reverb(x[rows], [items[i] for i in which.tolist()])
        for kind, uris in ((NOISE, self.aug.noise_uris), (BABBLE, self.aug.speech_uris)):
            rows = torch.nonzero(col["noise_kind"] == kind).flatten()
            if not len(rows):
                continue
            idx, off = col["noise_idx"][rows].long(), col["noise_off"][rows]
            mix = torch.zeros(len(rows), x.shape[1], device=self.device)
            for j in range(idx.shape[1]):  # talker slots (one for noise); -1 marks none
                live = torch.nonzero(idx[:, j] >= 0).flatten()
                if len(live):
                    items, which = self._bank(uris, idx[live, j])
                    mix[live] += segments(items, which, off[live, j], x.shape[1])
            x[rows] = add_noise(x[rows], mix, col["snr"][rows])
        return x
