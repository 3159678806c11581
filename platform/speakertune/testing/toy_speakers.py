"""Test helpers for diarization/explain tests: source-filter toy voices and a tiny trained model.

Each toy speaker has its own pitch range, vocal-tract length (formant scale) and spectral tilt;
an utterance is a run of voiced "syllables" (glottal pulses through formant resonators) with
short pauses, so a small encoder can tell speakers apart after a few seconds of training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy.signal import lfilter
from torch import nn

SR = 16000
FEATS = {"name": "fbank", "num_mel_bins": 40}
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                   [530, 1840, 2480], [640, 1190, 2390]], dtype=float)


def make_speakers(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    f0s = np.linspace(90, 260, n)
    rng.shuffle(f0s)
    return [{"f0": f0s[i], "tract": rng.uniform(0.8, 1.25), "tilt": rng.uniform(0.85, 0.97),
             "vowels": rng.permutation(len(VOWELS))[:3]} for i in range(n)]


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    r = np.exp(-np.pi * bw / SR)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]
    return lfilter([1.0 - r], a, x)


def utterance(spk: dict, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """About ``seconds`` of one toy speaker, peak-normalised, with a quiet noise floor."""
    out = []
    while sum(len(o) for o in out) < seconds * SR:
        syl = int(rng.uniform(0.15, 0.3) * SR)
        f0 = spk["f0"] * rng.uniform(0.9, 1.1) * np.linspace(1.05, 0.95, syl)
        phase = np.cumsum(f0 / SR)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal cycle
        src = lfilter([1.0], [1.0, -spk["tilt"]], pulses)
        formants = VOWELS[rng.choice(spk["vowels"])] * spk["tract"]
        voiced = sum(_resonator(src, f, 80 + 0.05 * f) for f in formants)
        voiced *= np.hanning(syl)
        out.append(voiced / (np.abs(voiced).max() + 1e-9))
        out.append(np.zeros(int(rng.uniform(0.0, 0.06) * SR)))
    wave = np.concatenate(out)[: int(seconds * SR)]
    return (0.5 * wave + 1e-3 * rng.standard_normal(len(wave))).astype(np.float32)


def features(wave: np.ndarray) -> torch.Tensor:
    from speakertune.frontend.features import build_feature

    return build_feature(FEATS)(torch.as_tensor(wave), SR)


class TinyCNN(nn.Module):
    """A 2-D conv encoder with the SpeakerEncoder contract ([B, T, F] -> [B, D])."""

    def __init__(self, feat_dim: int = 40, channels: int = 16, embed_dim: int = 32) -> None:
        super().__init__()
        self.frame_level = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.embedding = nn.Linear(2 * channels * ((feat_dim + 1) // 2), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frame_level(x.transpose(1, 2)[:, None])  # [B, C, F', T']
        h = h.flatten(1, 2)
        return self.embedding(torch.cat([h.mean(-1), h.std(-1)], dim=1))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core box: extra intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(encoder: nn.Module, feats: list[torch.Tensor], labels: list[int], *,
          steps: int = 100, crop: int = 150, seed: int = 0, cosine: bool = False,
          bin_dropout: float = 0.0) -> nn.Linear:
    """Train encoder + linear softmax head for ``steps`` Adam steps on random crops (a fixed
    count, not a time budget, so results do not depend on machine load); return the head."""
    with single_thread():
        return _train(encoder, feats, labels, steps, crop, seed, cosine, bin_dropout)


def _train(encoder: nn.Module, feats: list[torch.Tensor], labels: list[int], steps: int,
           crop: int, seed: int, cosine: bool, bin_dropout: float) -> nn.Linear:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_cls = max(labels) + 1
    encoder.eval()
    with torch.no_grad():
        dim = encoder(feats[0][None, :crop]).shape[1]
    head = nn.Linear(dim, n_cls, bias=not cosine)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    y_all = torch.as_tensor(labels)
    encoder.train()
    for _ in range(steps):
        idx = rng.integers(0, len(feats), 32)
        batch = []
        for i in idx:
            f = feats[i]
            s = int(rng.integers(0, max(1, len(f) - crop)))
            c = f[s : s + crop]
            c = c - c.mean(0, keepdim=True)
            if bin_dropout and rng.random() < 0.5:
                c = c.masked_fill(torch.as_tensor(rng.random(c.shape) < bin_dropout), 0.0)
            batch.append(c)
        emb = encoder(torch.stack(batch))
        if cosine:  # scaled cosine logits with an additive margin (AM-softmax)
            cos = nn.functional.normalize(emb) @ nn.functional.normalize(head.weight).T
            logits = 20.0 * (cos - 0.2 * nn.functional.one_hot(y_all[idx], n_cls))
        else:
            logits = head(emb)
        loss = nn.functional.cross_entropy(logits, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()
    return head
