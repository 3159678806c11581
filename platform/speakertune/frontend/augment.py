"""Data augmentation: additive noise / music / babble at a random SNR, reverberation,
speed perturbation (optionally as new speaker classes) and SpecAugment.

Waveform functions take float32 numpy arrays; randomness always comes from an explicit
``numpy.random.Generator`` so that a worker seeded once reproduces its augmentations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF
from scipy import signal

from speakertune.config import DEFAULTS, deep_merge
from speakertune.frontend.banks import AugmentError, resolve_bank

NOISE_CATEGORIES = ("noise", "music")

def power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def fit_length(x: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop (at a random offset when ``rng`` is given) or tile ``x`` to exactly ``length``."""
    if len(x) == 0:
        raise AugmentError("fit_length: empty signal")
    if len(x) < length:
        x = np.tile(x, -(-length // len(x)))
    start = int(rng.integers(0, len(x) - length + 1)) if rng is not None else 0
    return x[start : start + length]


def add_noise(
    x: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Mix ``noise`` (cropped/tiled to ``len(x)``) into ``x`` at ``snr_db`` dB SNR."""
    n = fit_length(np.asarray(noise, dtype=np.float32), len(x), rng)
    ps, pn = power(x), power(n)
    if pn <= 0.0:
        return np.asarray(x, dtype=np.float32)
    gain = np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return (x + gain * n).astype(np.float32)


def babble(
    x: np.ndarray, speech: list[np.ndarray], snr_db: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Babble noise: the sum of several other talkers, mixed in at ``snr_db``."""
    if not speech:
        raise AugmentError("babble: no speech files to mix")
    mix = sum(fit_length(np.asarray(s, dtype=np.float32), len(x), rng) for s in speech)
    return add_noise(x, mix, snr_db, rng)


def reverb(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room impulse response, aligned on its direct path, keeping length/level.

    Aligning on the RIR peak keeps the (crop-sensitive) timing of speech; rescaling to the dry
    power keeps the SNR of later noise mixing meaningful.
    """
    rir = np.asarray(rir, dtype=np.float32)
    if rir.ndim != 1 or len(rir) == 0 or not np.any(rir):
        raise AugmentError("reverb: RIR must be a non-silent 1-D signal")
    delay = int(np.argmax(np.abs(rir)))
    y = signal.fftconvolve(x, rir)[delay : delay + len(x)]
    py = power(y)
    if py > 0:
        y = y * np.sqrt(power(x) / py)
    return y.astype(np.float32)


def speed_perturb(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch moves too, as in Kaldi's sox speed perturbation)."""
    if factor == 1.0:
        return np.asarray(x, dtype=np.float32)
    y, _ = AF.speed(torch.as_tensor(np.asarray(x, dtype=np.float32)), sr, float(factor))
    return y.numpy()


def spec_augment(
    feats: np.ndarray, rng: np.random.Generator, freq_masks: int = 1, freq_width: int = 8,
    time_masks: int = 1, time_width: int = 10,
) -> np.ndarray:
    """SpecAugment time and frequency masking on ``feats[frames, dims]`` (returns a copy).

    Masked cells are set to 0, which is the per-utterance mean after mean normalisation.
    """
    out = np.array(feats, dtype=np.float32, copy=True)
    frames, dims = out.shape
    for _ in range(freq_masks):
        w = int(rng.integers(0, min(freq_width, dims) + 1))
        f0 = int(rng.integers(0, dims - w + 1))
        out[:, f0 : f0 + w] = 0.0
    for _ in range(time_masks):
        w = int(rng.integers(0, min(time_width, frames) + 1))
        t0 = int(rng.integers(0, frames - w + 1))
        out[t0 : t0 + w, :] = 0.0
    return out


def num_classes_multiplier(cfg: dict[str, Any]) -> int:
    """How many times the speaker classes are replicated (speed perturbation as new speakers)."""
    aug = deep_merge(DEFAULTS["augment"], cfg.get("augment", cfg))
    if aug["speed_as_new_speaker"] and float(aug["speed_prob"]) > 0:
        return 1 + sum(1 for s in aug["speeds"] if float(s) != 1.0)
    return 1


class Augmenter:
    """Applies the augmentations of ``cfg["augment"]`` with their probabilities.

    Bank audio is loaded lazily and cached, so a worker touches each noise/RIR file once.
    """

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
        self.speeds = [float(s) for s in aug["speeds"]]
        self.perturbed = [s for s in self.speeds if s != 1.0]
        self.speed_as_new_speaker = bool(aug["speed_as_new_speaker"])
        self.specaug = dict(aug["specaug"])
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
        self._cache: dict[str, np.ndarray] = {}

    def _load(self, uri: str) -> np.ndarray:
        if uri not in self._cache:
            from speakertune.data.audio import load_audio

            self._cache[uri] = load_audio(uri, self.sr, self.storage_options)
        return self._cache[uri]

    def _pick(self, uris: list[str], rng: np.random.Generator) -> np.ndarray:
        return self._load(uris[int(rng.integers(len(uris)))])

    def speed_choice(self, rng: np.random.Generator) -> tuple[float, int]:
        """(factor, k): k = 0 for unperturbed, else 1 + index of the factor among perturbed."""
        if self.perturbed and rng.random() < self.p["speed"]:
            k = int(rng.integers(len(self.perturbed)))
            return self.perturbed[k], k + 1
        return 1.0, 0

    def label_offset(self, k: int, num_classes: int) -> int:
        return k * num_classes if self.speed_as_new_speaker else 0

    def waveform(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Reverberation, then additive noise or babble (the order of a real recording)."""
        rng = rng or self.rng
        if rng.random() < self.p["reverb"]:
            x = reverb(x, self._pick(self.rir_uris, rng))
        snr = float(rng.uniform(*self.snr_range))
        if rng.random() < self.p["noise"]:
            x = add_noise(x, self._pick(self.noise_uris, rng), snr, rng)
        elif rng.random() < self.p["babble"]:
            k = int(rng.integers(self.babble_range[0], self.babble_range[1] + 1))
            x = babble(x, [self._pick(self.speech_uris, rng) for _ in range(k)], snr, rng)
        return x

    def features(self, feats: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or self.rng
        if rng.random() < self.p["specaug"]:
            return spec_augment(feats, rng, **self.specaug)
        return feats
