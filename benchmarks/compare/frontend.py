"""Front-end throughput: the Ray Data stream against a plain torch DataLoader doing the same
work (read, decode, crop, augment, fbank, random-length batches) with the same number of CPUs,
and against feature extraction alone on in-memory crops (the ceiling).

    .venv/bin/python benchmarks/compare/frontend.py [--quick] [--cpus N]

Real time is counted on the audio actually delivered (the cropped seconds). Both pipelines run
one warm-up epoch and are then timed over the next epochs, alternating epoch by epoch so both
see the same load on a shared machine, per-epoch start-up (DataLoader worker
processes, Ray Data planning and scheduling) included since that cost recurs every epoch.
Ends with one Markdown summary row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from speakertune.config import resolve
from speakertune.data.corpus import load_corpus
from speakertune.frontend.pipeline import FrontEnd, crop_frames
from speakertune.frontend.stream import RandomCropCollate, build_train_dataset


class _FrontEndDataset(torch.utils.data.Dataset):
    """The same FrontEnd work, one utterance per item, for the DataLoader baseline."""

    def __init__(self, corpus, cfg, epoch: int) -> None:
        self.rows = corpus.train[["utt", "uri", "label"]].to_dict("records")
        self.args = (cfg, corpus.num_classes, corpus.noise, corpus.rir, corpus.storage_options)
        self.epoch = epoch
        self.fe: FrontEnd | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if self.fe is None:  # built lazily, once per worker process
            torch.set_num_threads(1)  # as the Ray tasks do: one CPU each
            self.fe = FrontEnd(*self.args)
        r = self.rows[i]
        feats, label = self.fe.process(self.fe.load(r["uri"]), r["label"],
                                       self.fe.rng_for(r["utt"], self.epoch))  # fmt: skip
        return {"feats": feats, "label": np.int64(label)}


def _stack(items):
    return {"feats": np.stack([it["feats"] for it in items]),
            "label": np.array([it["label"] for it in items])}  # fmt: skip


def dataloader_epoch(corpus, cfg, cpus: int, batch: int, epoch: int) -> int:
    crop = RandomCropCollate(cfg, epoch)
    loader = torch.utils.data.DataLoader(
        _FrontEndDataset(corpus, cfg, epoch), batch_size=batch, shuffle=True,
        num_workers=cpus, collate_fn=lambda items: crop(_stack(items)),
    )  # fmt: skip
    return sum(f.shape[0] for f, _ in loader)


def ray_epoch(ds, cfg, batch: int, epoch: int) -> int:
    batches = ds.iter_torch_batches(batch_size=batch, collate_fn=RandomCropCollate(cfg, epoch))
    return sum(f.shape[0] for f, _ in batches)


def run_interleaved(corpus, cfg, cpus: int, batch: int, epochs: int) -> dict[str, list]:
    """Alternate Ray Data and DataLoader epochs so both see the same (shared, noisy) machine."""
    ds = build_train_dataset(corpus, cfg, epoch_seed=0)
    times: dict[str, list] = {"ray": [], "dataloader": []}
    for epoch in range(1 + epochs):  # epoch 0 is the warm-up of both
        for name in ("ray", "dataloader"):
            t0 = time.perf_counter()
            if name == "ray":
                n = ray_epoch(ds, cfg, batch, epoch)
            else:
                n = dataloader_epoch(corpus, cfg, cpus, batch, epoch)
            dt = time.perf_counter() - t0
            print(f"  epoch {epoch} {name:10s}: {n} utts in {dt:.2f} s", flush=True)
            if epoch:
                times[name].append((dt, n))
        print(f"  epoch {epoch} Ray Data {ds.skip_counter.pop()}", flush=True)
    ds.skip_counter.close()
    return {k: (sum(t for t, _ in v), sum(n for _, n in v)) for k, v in times.items()}


def run_ceiling(corpus, cfg) -> tuple[float, int]:
    """Features only, one process: crops already decoded and in memory."""
    torch.set_num_threads(1)
    fe = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir)
    waves = [fe.load(u)[: fe.samples] for u in corpus.train["uri"]]
    waves = [np.resize(w, fe.samples) for w in waves]  # tile short ones, as the pipeline does
    t0 = time.perf_counter()
    for w in waves:
        fe.feature(torch.from_numpy(w), fe.sr)
    return time.perf_counter() - t0, len(waves)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small corpus (about a minute)")
    ap.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--root", default=None, help="synthetic corpus cache directory")
    args = ap.parse_args()
    speakers, utts = (10, 10) if args.quick else (30, 20)
    epochs = 3
    root = args.root or str(Path(tempfile.gettempdir()) / f"speakertune-bench-{speakers}x{utts}")
    cfg = resolve(
        {"data": {"corpus": "synthetic", "root": root, "speakers": speakers,
                  "utts_per_speaker": utts, "val_speakers": 2}},  # fmt: skip
        {"augment.noise_prob": 0.5, "augment.reverb_prob": 0.5, "augment.specaug_prob": 0.5,
         "trainer.data_cpus": args.cpus},  # fmt: skip
    )
    print(f"corpus {speakers}x{utts} at {root}; {args.cpus} data CPUs; fbank 80, "
          f"crops {cfg['data']['min_seconds']}-{cfg['data']['max_seconds']} s, "
          f"noise/reverb/SpecAugment p=0.5", flush=True)  # fmt: skip
    corpus = load_corpus(cfg["data"])
    crop_s = crop_frames(cfg)[1] * cfg["features"]["frame_shift"] / 1000  # delivered seconds
    batch = 32

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        res = run_interleaved(corpus, cfg, args.cpus, batch, epochs)
    finally:
        ray.shutdown()
    (t_ray, n_ray), (t_dl, n_dl) = res["ray"], res["dataloader"]
    t_ceil, n_ceil = run_ceiling(corpus, cfg)

    def rate(t, n, cpus):
        ups = n / t
        return ups, ups * crop_s / cpus

    r_ray, x_ray = rate(t_ray, n_ray, args.cpus)
    r_dl, x_dl = rate(t_dl, n_dl, args.cpus)
    r_ceil, x_ceil = rate(t_ceil, n_ceil, 1)
    print()
    print("| pipeline | utterances/s | x real time per CPU | vs DataLoader |")
    print("|---|---|---|---|")
    print(f"| Ray Data ({args.cpus} CPUs) | {r_ray:.1f} | {x_ray:.1f} | {r_ray / r_dl:.2f} |")
    print(f"| DataLoader ({args.cpus} workers) | {r_dl:.1f} | {x_dl:.1f} | 1.00 |")
    print(f"| features only (1 CPU, ceiling) | {r_ceil:.1f} | {x_ceil:.1f} | - |")
    print()
    print(
        f"| frontend | Ray Data {r_ray:.1f} utt/s ({x_ray:.0f}x RT/CPU) | DataLoader "
        f"{r_dl:.1f} utt/s ({x_dl:.0f}x RT/CPU) | {r_ray / r_dl:.2f} | {args.cpus} CPUs, "
        f"{n_ray // epochs} utts x {crop_s:.2f} s x {epochs} epochs; features-only ceiling "
        f"{r_ceil:.0f} utt/s/CPU ({x_ceil:.0f}x RT); Ray at {x_ray / x_ceil:.0%} of it per CPU |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
