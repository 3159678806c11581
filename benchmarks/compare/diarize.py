"""Sliding-window embedding for diarization: features computed once per recording and windows
batched by length (ours, ``speakertune.diarization.diarize.diarize``) vs features + forward pass
per window (baseline, the straightforward loop). Same encoder, same windows, same clustering.

    .venv/bin/python benchmarks/compare/diarize.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from speakertune.diarization.diarize import (
    Diarization,
    DiarizeConfig,
    diarize,
    energy_vad,
    feature_fn,
    label_windows,
    sliding_windows,
)
from speakertune.models import build_encoder
from speakertune.testing import toy_speakers as ts


def recording(seconds: float, n_speakers: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    speakers = ts.make_speakers(n_speakers)
    parts, total = [], 0.0
    while total < seconds:
        utt = ts.utterance(speakers[int(rng.integers(n_speakers))], rng.uniform(2, 4), rng)
        parts += [utt, np.zeros(int(0.3 * ts.SR), np.float32)]
        total += len(utt) / ts.SR + 0.3
    return np.concatenate(parts)


def per_window(wave: np.ndarray, enc: torch.nn.Module, cfg: dict, dcfg: DiarizeConfig):
    """Baseline: cut each window out of the waveform, extract its features, embed it alone."""
    speech = energy_vad(wave, ts.SR, rel_db=dcfg.vad_db)
    windows = sliding_windows(speech, dcfg.window_s, dcfg.hop_s, dcfg.min_window_s)
    extract, _ = feature_fn(cfg)
    with torch.no_grad():
        emb = np.stack([
            enc(extract(wave[int(s * ts.SR) : int(e * ts.SR)], ts.SR)[None])[0].numpy()
            for s, e in windows
        ])
    embedded = Diarization([], speech, windows, np.zeros(len(windows), int), emb, {"file": "rec"})
    return label_windows(embedded, dcfg).labels, len(windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds, channels, rounds = (30.0, 256, 2) if args.quick else (120.0, 512, 3)
    cfg = {"features": {"name": "fbank", "num_mel_bins": 80}}
    torch.manual_seed(0)
    enc = build_encoder({"name": "ecapa_tdnn", "channels": channels}, "attentive_stats", 80, 192)
    enc.eval()
    wave = recording(seconds)
    dcfg = DiarizeConfig(window_s=1.5, hop_s=0.75, num_speakers=3)
    diarize(wave[: 5 * ts.SR], ts.SR, enc, cfg, dcfg)  # warm-up
    best = {"ours": float("inf"), "baseline": float("inf")}
    for r in range(rounds):  # interleaved rounds, best of each: the machine is shared
        t0 = time.perf_counter()
        ours = diarize(wave, ts.SR, enc, cfg, dcfg)
        best["ours"] = min(best["ours"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        base_labels, n_win = per_window(wave, enc, cfg, dcfg)
        best["baseline"] = min(best["baseline"], time.perf_counter() - t0)
        print(f"round {r + 1}/{rounds}: ours {best['ours']:.2f}s, "
              f"per-window {best['baseline']:.2f}s", flush=True)
    from sklearn.metrics import adjusted_rand_score

    agree = adjusted_rand_score(ours.labels, base_labels)
    audio_s = len(wave) / ts.SR
    rtf = {k: v / audio_s for k, v in best.items()}
    ratio = best["baseline"] / best["ours"]
    print(f"{audio_s:.0f}s recording, {n_win} windows (ours {ours.info['windows']}), "
          f"ECAPA-TDNN C={channels}, {torch.get_num_threads()} threads")
    print(f"real-time factor: ours {rtf['ours']:.3f}, per-window {rtf['baseline']:.3f}; "
          f"speed-up {ratio:.2f}x; cluster agreement (ARI) {agree:.3f}")
    machine = f"{platform.processor() or platform.machine()} {torch.get_num_threads()} thr CPU"
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(f"| diarize window embedding ({audio_s:.0f}s audio, {n_win} windows) "
          f"| RTF {rtf['ours']:.3f} (features once, batched) | RTF {rtf['baseline']:.3f} "
          f"(per-window features + forward) | {ratio:.2f}x | ECAPA C={channels}, ARI {agree:.2f}, "
          f"{machine} |")


if __name__ == "__main__":
    main()
