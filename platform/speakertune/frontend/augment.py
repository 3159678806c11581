"""Data augmentation: additive noise / music / babble at a random SNR, reverberation,
speed perturbation (optionally as new speaker classes) and SpecAugment.

Two halves. ``Augmenter.draw`` makes every random choice for one utterance from an explicit
``numpy.random.Generator`` (seeded per utterance and epoch) and returns it as a small *plan* of
numbers. The operations below apply plans to a batch of torch tensors ``[B, T]`` on any device:
a Ray Data CPU task calls them with the utterances of its chunk, a train worker with a whole
batch on its GPU (``frontend.device``), so both paths share one implementation and, given the
same plans, compute the same features.

    >>> x = torch.randn(8, 16000)                         # [B, T] waveforms
    >>> add_noise(x, torch.randn(8, 16000), torch.full((8,), 5.0)).shape
    torch.Size([8, 16000])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF

from speakertune.config import DEFAULTS, deep_merge
from speakertune.frontend.banks import AugmentError, resolve_bank

NOISE_CATEGORIES = ("noise", "music")
NOISE, BABBLE = 1, 2  # plan["noise_kind"]; 0 is none


# ---------------------------------------------------------------------- batched operations
def tile_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Rows ``[B, L]`` tiled or cut (from the start) to ``[B, length]``."""
    if x.shape[-1] == length:
        return x
    return x[..., torch.arange(length, device=x.device) % x.shape[-1]]


def segments(
    items: list[torch.Tensor], which: torch.Tensor, offsets: torch.Tensor, length: int
) -> torch.Tensor:
    """``[B, length]``: row b is bank item ``which[b]`` tiled and cut at a random offset.

    ``offsets`` are fractions in [0, 1) of the valid start range of the tiled item (what
    ``fit_length`` draws), so the plan need not know the items' lengths.
    """
    dev = which.device
    lens = torch.tensor([len(t) for t in items], device=dev)
    starts = torch.cumsum(lens, 0) - lens
    n = lens[which]
    tiled = (length + n - 1) // n * n
    start = (offsets.double() * (tiled - length + 1)).long().clamp_max(tiled - length)
    idx = starts[which, None] + (start[:, None] + torch.arange(length, device=dev)) % n[:, None]
    return torch.cat(items)[idx]


def power(x: torch.Tensor) -> torch.Tensor:
    """Mean power per row ``[B]`` (accumulated in float64: speech crops are long)."""
    return x.double().pow(2).mean(-1)


def add_noise(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Mix ``noise[B, T]`` into ``x[B, T]`` at ``snr_db[B]`` dB SNR (silent noise: unchanged)."""
    ps, pn = power(x), power(noise)
    gain = torch.where(pn > 0, ps / (pn.clamp_min(1e-30) * 10 ** (snr_db.double() / 10)), 0.0)
    return x + gain.sqrt().to(x.dtype)[:, None] * noise


def reverb(x: torch.Tensor, rirs: list[torch.Tensor]) -> torch.Tensor:
    """Convolve row b of ``x[B, T]`` with ``rirs[b]``, aligned on its direct path (peak), keeping
    length and power: the timing of the crop stays, later SNRs stay meaningful."""
    rir = torch.nn.utils.rnn.pad_sequence(rirs, batch_first=True).to(x)
    delay = rir.abs().argmax(-1)
    n = x.shape[-1] + rir.shape[-1] - 1
    fast = 1 << (n - 1).bit_length()  # a power-of-two FFT: ~2x faster than length n
    wet = torch.fft.irfft(torch.fft.rfft(x, fast) * torch.fft.rfft(rir, fast), fast)
    idx = delay[:, None] + torch.arange(x.shape[-1], device=x.device)
    y = torch.gather(wet, 1, idx)
    py = power(y)
    scale = torch.where(py > 0, power(x) / py.clamp_min(1e-30), 1.0).sqrt()
    return y * scale.to(y.dtype)[:, None]


def speed_perturb(x: torch.Tensor, sr: int, factor: float) -> torch.Tensor:
    """Play ``x[..., T]`` ``factor`` times faster (pitch too, as Kaldi's sox speed perturbation)."""
    if factor == 1.0:
        return x
    return AF.speed(x, sr, float(factor))[0]


def spec_augment(feats: torch.Tensor, masks: torch.Tensor, freq_masks: int) -> torch.Tensor:
    """Zero bands of ``feats[B, frames, dims]``: ``masks[B, M, 2]`` holds (start, width), the
    first ``freq_masks`` over dims, the rest over frames (0 is the mean after CMN)."""
    if masks.shape[1] == 0:
        return feats
    lo, hi = masks[..., 0, None], masks[..., 0, None] + masks[..., 1, None]  # [B, M, 1]
    f = torch.arange(feats.shape[2], device=feats.device)
    t = torch.arange(feats.shape[1], device=feats.device)
    fm = ((f >= lo[:, :freq_masks]) & (f < hi[:, :freq_masks])).any(1)  # [B, dims]
    tm = ((t >= lo[:, freq_masks:]) & (t < hi[:, freq_masks:])).any(1)  # [B, frames]
    return feats.masked_fill(fm[:, None, :] | tm[:, :, None], 0.0)


def num_classes_multiplier(cfg: dict[str, Any]) -> int:
    """How many times the speaker classes are replicated (speed perturbation as new speakers)."""
    aug = deep_merge(DEFAULTS["augment"], cfg.get("augment", cfg))
    if aug["speed_as_new_speaker"] and float(aug["speed_prob"]) > 0:
        return 1 + sum(1 for s in aug["speeds"] if float(s) != 1.0)
    return 1


# ---------------------------------------------------------------------------- random plans
class Augmenter:
    """The augmentations of ``cfg["augment"]``: their probabilities, ranges and banks, and the
    per-utterance random draws (``speed_choice``, ``draw``) that the batched operations apply."""

    def __init__(
        self, cfg: dict[str, Any], noise_df: pd.DataFrame | None = None,
        rir_df: pd.DataFrame | None = None, seed: int = 0, sample_rate: int = 16000,
        storage_options: dict | None = None,
    ) -> None:
        aug = deep_merge(DEFAULTS["augment"], cfg.get("augment", cfg))  # defaults read once
        self.sr = sample_rate
        self.p = {k: float(aug[f"{k}_prob"]) for k in
                  ("noise", "babble", "reverb", "speed", "specaug")}
        for key, p in self.p.items():
            if not 0.0 <= p <= 1.0:
                raise AugmentError(f"augment.{key}_prob: {p} is not a probability")
        lo, hi = (float(v) for v in aug["snr_db"])
        self.snr_range = (lo, hi)
        self.babble_range = tuple(int(v) for v in aug["babble_speakers"])
        self.max_talkers = max(1, self.babble_range[1])
        self.speeds = [float(s) for s in aug["speeds"]]
        self.perturbed = [s for s in self.speeds if s != 1.0]
        self.speed_as_new_speaker = bool(aug["speed_as_new_speaker"])
        self.specaug = {k: int(v) for k, v in aug["specaug"].items()}
        self.cache_mb = float(aug["bank_cache_mb"])
        self.storage_options = storage_options
        self.rng = np.random.default_rng(seed)
        if self.p["noise"] > 0 or self.p["babble"] > 0:
            noise_df = resolve_bank(aug, "noise", noise_df, storage_options)
        if self.p["reverb"] > 0:
            rir_df = resolve_bank(aug, "rir", rir_df, storage_options)
        if noise_df is None:
            noise_df = pd.DataFrame({"uri": [], "category": []})
        cats = noise_df["category"].astype(str)
        self.noise_uris = list(noise_df["uri"][cats.isin(NOISE_CATEGORIES)])
        self.speech_uris = list(noise_df["uri"][cats == "speech"])
        self.rir_uris = list(rir_df["uri"]) if rir_df is not None else []
        for key, uris, what in (("noise", self.noise_uris, "noise/music files"),
                                ("babble", self.speech_uris, "speech files"),
                                ("reverb", self.rir_uris, "RIRs")):
            if self.p[key] > 0 and not uris:
                raise AugmentError(f"augment.{key}_prob > 0 but the bank has no {what}")

    def speed_choice(self, rng: np.random.Generator) -> tuple[float, int]:
        """(factor, k): k = 0 for unperturbed, else 1 + index of the factor among perturbed."""
        if self.perturbed and rng.random() < self.p["speed"]:
            k = int(rng.integers(len(self.perturbed)))
            return self.perturbed[k], k + 1
        return 1.0, 0

    def label_offset(self, k: int, num_classes: int) -> int:
        return k * num_classes if self.speed_as_new_speaker else 0

    def draw(self, rng: np.random.Generator, frames: int, dims: int) -> dict[str, Any]:
        """One utterance's plan: RIR index (-1: none), SNR, noise kind (0, NOISE, BABBLE) with
        bank indices and offsets (index -1: unused talker slot), SpecAugment masks."""
        rir = int(rng.integers(len(self.rir_uris))) if rng.random() < self.p["reverb"] else -1
        snr = float(rng.uniform(*self.snr_range))
        idx = np.full(self.max_talkers, -1, np.int32)
        off = np.zeros(self.max_talkers, np.float32)
        kind = 0
        if rng.random() < self.p["noise"]:
            kind, idx[0], off[0] = NOISE, rng.integers(len(self.noise_uris)), rng.random()
        elif rng.random() < self.p["babble"]:
            kind = BABBLE
            for j in range(int(rng.integers(self.babble_range[0], self.babble_range[1] + 1))):
                idx[j], off[j] = rng.integers(len(self.speech_uris)), rng.random()
        s = self.specaug
        masks = np.zeros((s["freq_masks"] + s["time_masks"], 2), np.int32)
        if rng.random() < self.p["specaug"]:
            spans = [(dims, s["freq_width"])] * s["freq_masks"]
            spans += [(frames, s["time_width"])] * s["time_masks"]
            for m, (size, width) in enumerate(spans):
                w = int(rng.integers(0, min(width, size) + 1))
                masks[m] = int(rng.integers(0, size - w + 1)), w
        return {"rir": np.int32(rir), "snr": np.float32(snr), "noise_kind": np.int8(kind),
                "noise_idx": idx, "noise_off": off, "masks": masks}  # fmt: skip
