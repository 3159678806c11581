"""Acoustic features chosen by name: Kaldi-compatible fbank, MFCC and spectrogram, and the
raw waveform (framed) for self-supervised encoders.

All three compute ``torchaudio.compliance.kaldi``'s arithmetic over batches (kaldi_batch.py) so
that features match Kaldi recipes, one waveform or a device batch at a time. Builders take the
``features`` section of a trial config.
"""

from __future__ import annotations

from typing import Any

import torch

from speakertune.frontend.kaldi_batch import kaldi_batch
from speakertune.registry import FEATURES


class FeatureError(ValueError):
    """A waveform cannot be turned into features; the message names the utterance."""


# Keys of the ``features`` section that are ours, not keyword arguments of the kaldi function.
_OWN_KEYS = {"name", "cmn", "int16_scale"}


class OneWave:
    """``feature(wave[T], sample_rate) -> feats[frames, dim]`` through the class's ``batch``."""

    def batch(self, waves: torch.Tensor, sample_rate: int, name: str = "<batch>"
              ) -> torch.Tensor:  # fmt: skip
        raise NotImplementedError

    def __call__(
        self, wave: torch.Tensor, sample_rate: int, name: str = "<waveform>"
    ) -> torch.Tensor:
        """One waveform ``[T]`` -> ``[frames, dim]`` (a batch of one)."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.dim() != 1:
            raise FeatureError(f"{name}: expected a mono waveform [T], got {tuple(wave.shape)}")
        return self.batch(wave.unsqueeze(0), sample_rate, name)[0]


class KaldiFeature(OneWave):
    """Callable ``(wave[T], sample_rate) -> feats[frames, dim]`` around one kaldi function."""

    kind = ""
    allowed: frozenset[str] = frozenset()

    def __init__(self, cmn: bool = True, int16_scale: bool = True, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - self.allowed)
        if unknown:
            raise FeatureError(
                f"features.{unknown[0]}: not an option of {type(self).__name__.lower()} "
                f"(known: {', '.join(sorted(self.allowed | _OWN_KEYS))})"
            )
        self.cmn = bool(cmn)
        # Kaldi's dither and energy floor are defined on int16 sample values, so scale [-1, 1]
        # floats up before extraction, as Kaldi-trained recipes (e.g. WeSpeaker) do.
        self.int16_scale = bool(int16_scale)
        self.kwargs = kwargs

    def batch(
        self, waves: torch.Tensor, sample_rate: int, name: str = "<batch>"
    ) -> torch.Tensor:
        """Equal-length waveforms ``[B, T]`` (on any device) -> ``[B, frames, dim]``."""
        window = int(sample_rate * self.kwargs.get("frame_length", 25.0) / 1000)
        if waves.shape[-1] < window:
            raise FeatureError(
                f"{name}: {waves.shape[-1]} samples is shorter than one {window}-sample frame"
            )
        if self.int16_scale:
            waves = waves * 32768.0
        feats = kaldi_batch(self.kind, waves, float(sample_rate), **self.kwargs)
        if self.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats

    def dim(self, sample_rate: int) -> int:
        raise NotImplementedError


_COMMON = frozenset(
    {
        "frame_length", "frame_shift", "dither", "preemphasis_coefficient", "remove_dc_offset",
        "window_type", "round_to_power_of_two", "snip_edges", "energy_floor", "raw_energy",
        "blackman_coeff",
    }
)
_MEL = frozenset({"num_mel_bins", "low_freq", "high_freq", "use_energy", "htk_compat"})


@FEATURES.register("fbank")
class Fbank(KaldiFeature):
    kind = "fbank"
    allowed = _COMMON | _MEL | {"use_log_fbank", "use_power"}

    def __init__(self, num_mel_bins: int = 80, **kwargs: Any) -> None:
        super().__init__(num_mel_bins=int(num_mel_bins), **kwargs)

    def dim(self, sample_rate: int) -> int:
        return self.kwargs["num_mel_bins"] + int(bool(self.kwargs.get("use_energy", False)))


@FEATURES.register("mfcc")
class Mfcc(KaldiFeature):
    kind = "mfcc"
    allowed = _COMMON | _MEL | {"num_ceps", "cepstral_lifter"}

    def __init__(self, num_mel_bins: int = 30, num_ceps: int | None = None, **kwargs: Any) -> None:
        # Default to "high-resolution" MFCC (as many cepstra as mel bins), the x-vector choice.
        num_ceps = int(num_mel_bins if num_ceps is None else num_ceps)
        if num_ceps > num_mel_bins:
            raise FeatureError(f"features.num_ceps: {num_ceps} > num_mel_bins {num_mel_bins}")
        super().__init__(num_mel_bins=int(num_mel_bins), num_ceps=num_ceps, **kwargs)

    def dim(self, sample_rate: int) -> int:
        return self.kwargs["num_ceps"]


@FEATURES.register("spectrogram")
class Spectrogram(KaldiFeature):
    kind = "spectrogram"
    allowed = _COMMON

    def __init__(self, num_mel_bins: int | None = None, **kwargs: Any) -> None:
        # num_mel_bins is accepted (and unused) so that switching `features.name` alone works.
        super().__init__(**kwargs)

    def dim(self, sample_rate: int) -> int:
        window = int(sample_rate * self.kwargs.get("frame_length", 25.0) / 1000)
        if self.kwargs.get("round_to_power_of_two", True):
            window = 1 << (window - 1).bit_length()
        return window // 2 + 1


@FEATURES.register("waveform")
class Waveform(OneWave):
    """Raw samples for the self-supervised encoders (``ssl_ecapa``, ``ssl_mhfa``): the waveform
    in [-1, 1] cut into frames of one hop (``frame_shift``, 160 samples at 16 kHz), no overlap.

    It frames as fbank does (a ``frame_length`` window every ``frame_shift``, Kaldi's
    snip_edges) and keeps each frame's first hop of samples, so crops, padding, caches and
    frame counts mean what they mean for fbank (the last window - hop samples are dropped).
    Normalisation is the encoder's (per the SSL model), not done here.

    >>> Waveform().batch(torch.zeros(2, 16000), 16000).shape
    torch.Size([2, 98, 160])
    """

    int16_scale = False  # what ``export.frontend_spec`` records
    cmn = False
    reference = "samples in [-1, 1], frame i = samples [i * hop, (i + 1) * hop)"

    def __init__(self, frame_length: float = 25.0, frame_shift: float = 10.0,
                 num_mel_bins: int | None = None, dither: float = 0.0, cmn: bool = False) -> None:
        # num_mel_bins, dither and cmn are accepted (unused) so that switching
        # `features.name` alone works from the default config.
        if not 0 < frame_shift <= frame_length:
            raise FeatureError("features.frame_shift: need 0 < frame_shift <= frame_length")
        self.kwargs = {"frame_length": float(frame_length), "frame_shift": float(frame_shift)}

    def batch(
        self, waves: torch.Tensor, sample_rate: int, name: str = "<batch>"
    ) -> torch.Tensor:
        frames = num_frames(waves.shape[-1], sample_rate, self.kwargs)
        if frames < 1:
            raise FeatureError(f"{name}: {waves.shape[-1]} samples is shorter than one frame")
        hop = self.dim(sample_rate)
        return waves[:, : frames * hop].float().reshape(waves.shape[0], frames, hop)

    def dim(self, sample_rate: int) -> int:
        return int(sample_rate * self.kwargs["frame_shift"] / 1000)


def _split(cfg: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Accept a whole trial config or just its ``features`` section."""
    if "features" in cfg:
        return dict(cfg["features"]), int(cfg.get("data", {}).get("sample_rate", 16000))
    return dict(cfg), 16000


def build_feature(cfg: dict[str, Any]) -> KaldiFeature | Waveform:
    """The feature extractor named by ``cfg`` (trial config or its ``features`` section)."""
    feat_cfg, _ = _split(cfg)
    return FEATURES.build(feat_cfg)


def feature_dim(cfg: dict[str, Any], sample_rate: int | None = None) -> int:
    """Number of feature dimensions per frame for ``cfg``."""
    feat_cfg, sr = _split(cfg)
    return build_feature(feat_cfg).dim(sample_rate or sr)


def num_frames(num_samples: int, sample_rate: int, cfg: dict[str, Any]) -> int:
    """Frames produced from ``num_samples`` (Kaldi snip_edges=True framing)."""
    feat_cfg, _ = _split(cfg)
    shift = int(sample_rate * feat_cfg.get("frame_shift", 10.0) / 1000)
    window = int(sample_rate * feat_cfg.get("frame_length", 25.0) / 1000)
    if not feat_cfg.get("snip_edges", True):
        return (num_samples + shift // 2) // shift
    return 0 if num_samples < window else 1 + (num_samples - window) // shift
