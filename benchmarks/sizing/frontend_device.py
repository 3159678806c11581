"""Data-side cost of the front end when augmentation and features move to the train worker's
device (``frontend.device: worker|gpu``): utterances/s per data CPU.

    .venv/bin/python benchmarks/sizing/frontend_device.py [--quick] [--cpus N]

Measures, alternating rounds so all see the same (shared, noisy) machine:
- per core, one process: the old work per utterance (fetch, full decode, crop, augment,
  fbank: a batch of one) vs the new data-side work (crop-only read, int16 + random plan);
- the worker side of the new path on this CPU: the batch front end on batches of ``--batch``
  (on a GPU this is the device's work, not a data CPU's);
- streamed with ``--cpus`` CPUs: Ray Data (``cpu`` vs ``worker`` mode) and a plain torch
  DataLoader doing the same two kinds of work.
Noise, reverberation and SpecAugment at p=0.5, speed perturbation at p=0.5 (as in the recipes).
Ends with Markdown rows for benchmarks/RESULTS.md.
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
from speakertune.frontend.pipeline import FrontEnd, stack_rows
from speakertune.frontend.stream import build_train_dataset


class _Items(torch.utils.data.Dataset):
    """One utterance per item: the full old work, or the new data-side (read-only) work."""

    def __init__(self, corpus, cfg, full: bool) -> None:
        self.rows = corpus.train[["utt", "uri", "label"]].to_dict("records")
        self.args = (cfg, corpus.num_classes, corpus.noise, corpus.rir, corpus.storage_options)
        self.full = full
        self.fe: FrontEnd | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if self.fe is None:  # built once per worker process, one thread as a Ray task has
            torch.set_num_threads(1)
            self.fe = FrontEnd(*self.args)
        r, fe = self.rows[i], self.fe
        rng = fe.rng_for(r["utt"], 0)
        if self.full:
            return fe.process(fe.load(r["uri"]), r["label"], rng)
        return fe.row(lambda n, g: fe.fetch(r["uri"], n, g), r["label"], rng)


def per_core(corpus, cfg, rounds: int) -> dict[str, float]:
    """Utterances/s in this process (1 thread): old per-utterance work vs new data side."""
    torch.set_num_threads(1)
    items = {"old": _Items(corpus, cfg, True), "new": _Items(corpus, cfg, False)}
    t = {"old": 0.0, "new": 0.0}
    n = len(corpus.train)
    for k in items:
        items[k][0]  # warm-up: build the front end, decode the banks once
    for _ in range(rounds):
        for k, ds in items.items():
            t0 = time.perf_counter()
            for i in range(n):
                ds[i]
            t[k] += time.perf_counter() - t0
    return {k: rounds * n / v for k, v in t.items()}


_OLD = """
import sys, time, torch
from speakertune.config import resolve
from speakertune.data.corpus import load_corpus
from speakertune.frontend.pipeline import FrontEnd
torch.set_num_threads(1)
cfg = resolve(*eval(sys.argv[1]))
corpus = load_corpus(cfg["data"])
fe = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir)
rows = corpus.train[["utt", "uri", "label"]].to_dict("records")
fe.process(fe.load(rows[0]["uri"]), 0, fe.rng_for("x", 0))
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    for r in rows:
        fe.process(fe.load(r["uri"]), r["label"], fe.rng_for(r["utt"], 0))
print(int(sys.argv[2]) * len(rows) / (time.perf_counter() - t0))
"""


def old_code(src: str, overrides: tuple, rounds: int) -> float:
    """Utterances/s of the pre-device FrontEnd (a checkout's ``platform/`` in ``src``), per
    utterance in one process and thread, on the same corpus and augmentation settings."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", _OLD, repr(overrides), str(rounds)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def worker_side(corpus, cfg, batch: int, rounds: int) -> float:
    """Utterances/s of the batch front end (augment + fbank) on this CPU, 1 thread."""
    torch.set_num_threads(1)
    fe = FrontEnd(resolve(cfg, {"frontend.device": "worker"}), corpus.num_classes, corpus.noise,
                  corpus.rir)  # fmt: skip
    df = corpus.train.iloc[:batch]
    rows, _ = fe.read({"utt": df["utt"].to_numpy(), "uri": df["uri"].to_numpy(),
                       "label": df["label"].to_numpy()}, 0)  # fmt: skip
    raw = stack_rows(rows)
    fe.apply(raw)  # warm-up (bank decode)
    t0 = time.perf_counter()
    for _ in range(rounds):
        fe.apply(raw)
    return rounds * len(rows) / (time.perf_counter() - t0)


def streamed(corpus, cfg, cpus: int, epochs: int, use_ray: bool) -> dict[str, float]:
    """Utterances/s streamed with ``cpus`` CPUs: DataLoader (and Ray Data), old and new work."""
    cfgs = {"old": cfg, "new": resolve(cfg, {"frontend.device": "worker"})}
    hows = ("ray", "dataloader") if use_ray else ("dataloader",)
    ds = {k: build_train_dataset(corpus, c, epoch_seed=0)
          for k, c in cfgs.items()} if use_ray else {}  # fmt: skip
    t: dict[str, list[float]] = {}
    for epoch in range(1 + epochs):  # epoch 0 warms every pipeline up
        for k in ("old", "new"):
            for how in hows:
                t0 = time.perf_counter()
                if how == "ray":
                    n = sum(len(b["label"]) for b in ds[k].iter_batches(
                        batch_size=32, batch_format="numpy"))  # fmt: skip
                else:
                    loader = torch.utils.data.DataLoader(
                        _Items(corpus, cfgs[k], k == "old"), batch_size=32, shuffle=True,
                        num_workers=cpus, collate_fn=lambda items: items)  # fmt: skip
                    n = sum(len(b) for b in loader)
                dt = time.perf_counter() - t0
                print(f"  epoch {epoch} {k} {how:10s}: {n} utts in {dt:.2f} s", flush=True)
                if epoch:
                    t.setdefault(f"{how} {k}", []).append(n / dt)
    for d in ds.values():
        d.skip_counter.close()
    return {k: float(np.mean(v)) for k, v in t.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small corpus (10 x 10)")
    ap.add_argument("--no-stream", action="store_true", help="per-core figures only")
    ap.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--root", default=None, help="synthetic corpus cache directory")
    ap.add_argument("--old-src", default=None, help="platform/ of a checkout before the device "
                    "front end (git archive 9e7a336 platform): time its per-utterance work too")
    args = ap.parse_args()
    speakers, utts = (10, 10) if args.quick else (30, 20)
    root = args.root or str(Path(tempfile.gettempdir()) / f"speakertune-bench-{speakers}x{utts}")
    overrides = (
        {"data": {"corpus": "synthetic", "root": root, "speakers": speakers,
                  "utts_per_speaker": utts, "val_speakers": 2}},  # fmt: skip
        {"augment.noise_prob": 0.5, "augment.reverb_prob": 0.5, "augment.specaug_prob": 0.5,
         "augment.speed_prob": 0.5, "trainer.data_cpus": args.cpus},  # fmt: skip
    )
    cfg = resolve(*overrides)
    corpus = load_corpus(cfg["data"])
    print(f"corpus {speakers}x{utts} ({len(corpus.train)} train utts) at {root}; fbank 80, "
          f"crops up to {cfg['data']['max_seconds']} s; noise/reverb/speed/SpecAugment p=0.5",
          flush=True)  # fmt: skip
    core = per_core(corpus, cfg, rounds=2 if args.quick else 3)
    dev = worker_side(corpus, cfg, min(args.batch, len(corpus.train)), rounds=3)
    main_rate = old_code(args.old_src, overrides, 2) if args.old_src else None
    rows = [f"| frontend_device: data-side utt/s per CPU, new (read+crop only) vs old (all per "
            f"utterance) | {core['new']:.0f} | {core['old']:.0f} | {core['new'] / core['old']:.2f}x"
            f" | this VM, 1 thread; worker-side batch front end on CPU {dev:.0f} utt/s |"]
    print()
    print("| per data CPU (1 process, 1 thread) | utterances/s | vs old |")
    print("|---|---|---|")
    print(f"| old: read+decode+augment+fbank per utterance | {core['old']:.1f} | 1.00 |")
    print(f"| new: crop-only read + int16 + plan (Ray Data side) | {core['new']:.1f} | "
          f"{core['new'] / core['old']:.2f} |")
    print(f"| new, worker side on this CPU (batch {args.batch}) | {dev:.1f} | "
          f"{dev / core['old']:.2f} |")
    if main_rate:
        print(f"| old code (--old-src), per utterance, run after | {main_rate:.1f} | "
              f"{main_rate / core['old']:.2f} |")
        rows.append(f"| frontend_device: data side new vs the old code's per-utterance work | "
                    f"{core['new']:.0f} | {main_rate:.0f} | {core['new'] / main_rate:.2f}x | "
                    f"old code timed in a subprocess after the in-process rounds |")
    if not args.no_stream:
        import ray

        try:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - a loaded machine: still time the DataLoader
            print(f"Ray did not start ({str(exc).splitlines()[0]}); DataLoader only", flush=True)
        try:
            s = streamed(corpus, cfg, args.cpus, 2, use_ray=ray.is_initialized())
        finally:
            ray.shutdown()
        print()
        print(f"| streamed, {args.cpus} CPUs | utterances/s | per CPU | vs old, same loader |")
        print("|---|---|---|---|")
        for k, v in s.items():
            how = k.split()[0]
            print(f"| {k} | {v:.1f} | {v / args.cpus:.1f} | {v / s[how + ' old']:.2f} |")
        dl = (f"DataLoader ({args.cpus} workers) new {s['dataloader new']:.0f}, old "
              f"{s['dataloader old']:.0f} utt/s ({s['dataloader new'] / s['dataloader old']:.2f}x)")
        if "ray new" in s:
            rows.append(
                f"| frontend_device streamed ({args.cpus} CPUs): Ray Data new vs old | "
                f"{s['ray new']:.0f} utt/s | {s['ray old']:.0f} utt/s | "
                f"{s['ray new'] / s['ray old']:.2f}x | {dl}; Ray new / DataLoader new "
                f"{s['ray new'] / s['dataloader new']:.2f}x |")
        else:
            rows.append(f"| frontend_device streamed: {dl} | | | | Ray could not start |")
    print()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
