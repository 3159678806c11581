"""Forward+backward throughput (frames/s, CPU) of our ECAPA-TDNN vs SpeechBrain's ECAPA_TDNN.

Same configuration (80-dim fbank, C=512, MFA 1536, attentive statistics pooling with global
context, 192-dim embedding), same batch, timed in alternation in one process so that machine
load affects both alike. Prints the ratio (ours / SpeechBrain; >= 1.0 means ours is faster),
both parameter counts, and ends with one Markdown table row. The ratio uses each model's best
step (least disturbed by other processes on a shared machine); medians are printed too.

    .venv/bin/python benchmarks/compare/encoder.py [--quick] [--channels 512] [--batch 16] \
        [--frames 200]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from speakertune.models import build_encoder, count_parameters


def speechbrain_ecapa(feat_dim: int, channels: int, mfa: int, embed_dim: int) -> torch.nn.Module:
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    return ECAPA_TDNN(feat_dim, channels=[channels] * 4 + [mfa], lin_neurons=embed_dim)


def step_seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    """One training step's forward + backward (no optimiser), in seconds."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(x).square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batch, few repeats")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--mfa", type=int, default=None, help="default 3 x channels")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--frames", type=int, default=200, help="2 s of 10 ms frames")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    batch = args.batch or (4 if args.quick else 16)
    repeats = args.repeats or (3 if args.quick else 10)
    mfa = args.mfa or 3 * args.channels
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feat_dim, embed_dim = 80, 192

    ours = build_encoder({"name": "ecapa_tdnn", "channels": args.channels, "mfa_channels": mfa},
                         {"name": "attentive_stats"}, feat_dim, embed_dim).train()
    theirs = speechbrain_ecapa(feat_dim, args.channels, mfa, embed_dim).train()
    x = torch.randn(batch, args.frames, feat_dim)
    print(f"ECAPA-TDNN C={args.channels} MFA={mfa}, batch {batch} x {args.frames} frames x "
          f"{feat_dim} dims, {torch.get_num_threads()} threads, {repeats} timed steps each")
    print(f"parameters: ours {count_parameters(ours):,}  speechbrain {count_parameters(theirs):,}")

    for model in (ours, theirs):  # warm-up: allocator, oneDNN kernel selection
        step_seconds(model, x)
    times: dict[str, list[float]] = {"ours": [], "speechbrain": []}
    for i in range(repeats):
        pair = [("ours", ours), ("speechbrain", theirs)]
        for name, model in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
            times[name].append(step_seconds(model, x))
        print(f"  step {i + 1}/{repeats}: ours {times['ours'][-1] * 1e3:.0f} ms, "
              f"speechbrain {times['speechbrain'][-1] * 1e3:.0f} ms", flush=True)

    frames = batch * args.frames
    # Best step = least disturbed by other processes on a shared machine; median for context.
    fps = {k: frames / min(v) for k, v in times.items()}
    med = {k: frames / statistics.median(v) for k, v in times.items()}
    ratio = fps["ours"] / fps["speechbrain"]
    for k in ("ours", "speechbrain"):
        print(f"{k:12s}{fps[k]:10.0f} frames/s best step, {med[k]:10.0f} median")
    print(f"ratio ours/speechbrain = {ratio:.2f} best, {med['ours'] / med['speechbrain']:.2f} "
          "median (target >= 1.0)")
    machine = f"{platform.processor() or platform.machine()} {torch.get_num_threads()} thr"
    print("| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print(f"| encoder | {fps['ours']:.0f} frames/s | SpeechBrain ECAPA_TDNN "
          f"{fps['speechbrain']:.0f} frames/s | {ratio:.2f}x | ECAPA C={args.channels} "
          f"B={batch} T={args.frames} fwd+bwd, params {count_parameters(ours):,} / "
          f"{count_parameters(theirs):,}, {machine} |")

if __name__ == "__main__":
    main()
