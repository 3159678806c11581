"""Kaldi-compatible fbank / MFCC / spectrogram over a BATCH of equal-length waveforms.

``torchaudio.compliance.kaldi`` works on one waveform at a time; this is the same arithmetic
(framing, dither, DC removal, raw energy, pre-emphasis, window, power spectrum, mel banks, log,
DCT, lifter) on ``[B, T]`` so a train worker featurises a whole batch on its device in one go.
It reuses torchaudio's window, mel-bank, DCT and lifter helpers; the tests compare it with
``kaldi.fbank``/``mfcc``/``spectrogram`` row by row.

    >>> waves = torch.randn(4, 16000) * 1000           # [B, T]
    >>> kaldi_batch("fbank", waves, 16000, num_mel_bins=80).shape
    torch.Size([4, 98, 80])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchaudio.compliance import kaldi

# kaldi's own defaults, for the options a feature section leaves out
_DEFAULTS: dict[str, Any] = {
    "blackman_coeff": 0.42, "dither": 0.0, "energy_floor": 1.0, "frame_length": 25.0,
    "frame_shift": 10.0, "high_freq": 0.0, "htk_compat": False, "low_freq": 20.0,
    "num_mel_bins": 23, "num_ceps": 13, "cepstral_lifter": 22.0, "preemphasis_coefficient": 0.97,
    "raw_energy": True, "remove_dc_offset": True, "round_to_power_of_two": True,
    "snip_edges": True, "use_energy": False, "use_log_fbank": True, "use_power": True,
    "window_type": kaldi.POVEY,
}  # fmt: skip


def frame(waves: torch.Tensor, size: int, shift: int, snip_edges: bool) -> torch.Tensor:
    """``[B, T]`` -> frames ``[B, m, size]`` (Kaldi's framing, reflected edges when not snipped)."""
    if not snip_edges:
        rev = torch.flip(waves, [1])
        m = (waves.shape[1] + shift // 2) // shift
        pad = size // 2 - shift // 2
        waves = torch.cat((rev[:, -pad:], waves, rev) if pad > 0 else (waves[:, -pad:], rev), 1)
        return waves.unfold(1, size, shift)[:, :m]
    return waves.unfold(1, size, shift)


def _log_energy(frames: torch.Tensor, floor: float) -> torch.Tensor:
    eps = torch.finfo(frames.dtype).eps
    energy = frames.pow(2).sum(-1).clamp_min(eps).log()
    return energy.clamp_min(math.log(floor)) if floor > 0.0 else energy


def _windowed(waves: torch.Tensor, sr: float, o: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Frames ready for the FFT ``[B, m, padded]`` and their log energy ``[B, m]``."""
    shift = int(sr * o["frame_shift"] / 1000)
    size = int(sr * o["frame_length"] / 1000)
    padded = 1 << (size - 1).bit_length() if o["round_to_power_of_two"] else size
    x = frame(waves, size, shift, bool(o["snip_edges"]))
    if o["dither"] != 0.0:
        x = x + torch.randn_like(x) * o["dither"]
    if o["remove_dc_offset"]:
        x = x - x.mean(-1, keepdim=True)
    if o["raw_energy"]:
        energy = _log_energy(x, o["energy_floor"])
    p = o["preemphasis_coefficient"]
    if p != 0.0:
        x = x - p * torch.cat((x[..., :1], x[..., :-1]), -1)
    win = kaldi._feature_window_function(o["window_type"], size, o["blackman_coeff"],
                                         x.device, x.dtype)  # fmt: skip
    x = torch.nn.functional.pad(x * win, (0, padded - size))
    if not o["raw_energy"]:
        energy = _log_energy(x, o["energy_floor"])
    return x, energy, padded


def _fbank(waves: torch.Tensor, sr: float, o: dict[str, Any]) -> torch.Tensor:
    x, energy, padded = _windowed(waves, sr, o)
    spec = torch.fft.rfft(x).abs()
    if o["use_power"]:
        spec = spec.pow(2.0)
    mel, _ = kaldi.get_mel_banks(int(o["num_mel_bins"]), padded, sr, o["low_freq"],
                                 o["high_freq"], -500.0, 100.0, 1.0)  # fmt: skip
    mel = torch.nn.functional.pad(mel, (0, 1)).to(x.device, x.dtype)
    out = spec @ mel.T
    if o["use_log_fbank"]:
        out = out.clamp_min(torch.finfo(out.dtype).eps).log()
    if o["use_energy"]:
        e = energy.unsqueeze(-1)
        out = torch.cat((out, e) if o["htk_compat"] else (e, out), -1)
    return out


def _mfcc(waves: torch.Tensor, sr: float, o: dict[str, Any]) -> torch.Tensor:
    feats = _fbank(waves, sr, {**o, "use_log_fbank": True, "use_power": True})
    n_ceps, n_mel, htk = int(o["num_ceps"]), int(o["num_mel_bins"]), bool(o["htk_compat"])
    if o["use_energy"]:
        energy = feats[..., n_mel if htk else 0]
        feats = feats[..., int(not htk) : n_mel + int(not htk)]
    out = feats @ kaldi._get_dct_matrix(n_ceps, n_mel).to(feats.device, feats.dtype)
    if o["cepstral_lifter"] != 0.0:
        out = out * kaldi._get_lifter_coeffs(n_ceps, o["cepstral_lifter"]).to(out)
    if o["use_energy"]:
        out[..., 0] = energy
    if htk:
        c0 = out[..., :1] * (1.0 if o["use_energy"] else math.sqrt(2))
        out = torch.cat((out[..., 1:], c0), -1)
    return out


def _spectrogram(waves: torch.Tensor, sr: float, o: dict[str, Any]) -> torch.Tensor:
    x, energy, _ = _windowed(waves, sr, o)
    out = torch.fft.rfft(x).abs().pow(2.0).clamp_min(torch.finfo(x.dtype).eps).log()
    out[..., 0] = energy
    return out


_FNS = {"fbank": _fbank, "mfcc": _mfcc, "spectrogram": _spectrogram}


def kaldi_batch(kind: str, waves: torch.Tensor, sample_rate: float, **opts: Any) -> torch.Tensor:
    """``kind`` features of ``waves[B, T]`` -> ``[B, frames, dim]`` (options as in kaldi.*)."""
    o = {**_DEFAULTS, **opts}
    return _FNS[kind](waves, float(sample_rate), o)
