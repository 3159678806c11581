"""What each published encoder costs: parameters, MACs for 2 s, and CPU latency, against
ECAPA-TDNN (C=512) timed in the same process.

Every encoder at its published size with its published front end (80 mel bins; ReDimNet-B0 60,
the other ReDimNets 72), its published pooling (attentive or plain statistics) and embedding
size. MACs
are counted (``speakertune.models.cost``); latency is the median of ``--repeats`` batch-1
forward passes of 198 frames (2 s) on ``--threads`` CPU threads, the encoders taking turns so
that machine load touches all alike. Prints each encoder's latency as a ratio to ECAPA-TDNN's
(< 1: faster) and ends with a Markdown table.

    .venv/bin/python benchmarks/compare/encoder_cost.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from speakertune.models import build_encoder, count_macs, count_parameters

# name, model config, mel bins, embedding, published parameters (M), published GMACs (2 s
# unless marked), pooling when not attentive statistics (the published models' own).
# Sources: the ReDimNet paper's table (ECAPA, CAM++, ReDimNet, ResNet34), WeSpeaker's README
# (ResNet221, SimAM-ResNet34), 3D-Speaker's (ERes2NetV2, 3 s).
ENCODERS = [
    ("ECAPA-TDNN C=512", {"name": "ecapa_tdnn"}, 80, 192, "6.4", "1.05"),
    ("ECAPA-TDNN C=1024", {"name": "ecapa_tdnn_c1024"}, 80, 192, "14.9", "2.67"),
    ("CAM++", {"name": "campplus"}, 80, 512, "7.2", "1.15", "stats"),
    ("ERes2NetV2", {"name": "eres2netv2"}, 80, 192, "17.8", "12.69 (3 s)", "stats"),
    ("ReDimNet-B0", {"name": "redimnet", "size": "b0"}, 60, 192, "1.0", "0.43"),
    ("ReDimNet-B1", {"name": "redimnet", "size": "b1"}, 72, 192, "2.2", "0.54"),
    ("ReDimNet-B2", {"name": "redimnet", "size": "b2"}, 72, 192, "4.7", "0.90"),
    ("ReDimNet-B6", {"name": "redimnet", "size": "b6"}, 72, 192, "15.0", "20.27"),
    ("ResNet34", {"name": "resnet34"}, 80, 256, "6.6", "4.55", "stats"),
    ("SimAM-ResNet34", {"name": "simam_resnet34"}, 80, 256, "25.2", "-", "stats"),
    ("ResNet221", {"name": "resnet221"}, 80, 256, "23.79", "21.29", "stats"),
]
FRAMES = 198  # 2 s of 25 ms / 10 ms frames


def forward_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small encoders only, 3 repeats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    chosen = ENCODERS[:1] + [e for e in ENCODERS[1:] if not args.quick or "B0" in e[0]
                             or "CAM" in e[0]]  # fmt: skip
    torch.manual_seed(0)
    models, inputs, rows = {}, {}, {}
    for name, cfg, mels, emb, pub_params, pub_macs, *pooling in chosen:
        models[name] = build_encoder(cfg, (pooling or ["attentive_stats"])[0], mels, emb).eval()
        inputs[name] = torch.randn(1, FRAMES, mels)
        rows[name] = [count_parameters(models[name]), count_macs(models[name], 200), pub_params,
                      pub_macs]  # fmt: skip
        forward_ms(models[name], inputs[name])  # warm-up: allocator, oneDNN kernel choice
    times: dict[str, list[float]] = {n: [] for n in models}
    for i in range(repeats):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for name in order:
            times[name].append(forward_ms(models[name], inputs[name]))
    base = statistics.median(times[ENCODERS[0][0]])
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), batch 1 x "
          f"{FRAMES} frames, median of {repeats}")
    print("| encoder | params (M) | published | GMACs, 2 s | published | CPU ms | vs ECAPA |")
    print("|---|---|---|---|---|---|---|")
    for name, (params, macs, pub_p, pub_m) in rows.items():
        ms = statistics.median(times[name])
        print(f"| {name} | {params / 1e6:.2f} | {pub_p} | {macs / 1e9:.2f} | {pub_m} | "
              f"{ms:.0f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
