"""Supply and demand of training crops: what the Ray Data front end delivers with N data CPUs
divided by what the training step consumes (ECAPA-TDNN C=512, batch 128), and from that how
many data CPUs one GPU needs for each shipped search space (issue 14).

    nice -n 10 .venv/bin/python benchmarks/sizing/supply_demand.py [--quick] [--cpus 1 2] \
        [--amp bf16]

Supply: the project's own stream (``frontend.stream.build_train_dataset``, Ray Data, at most
N one-CPU tasks) in both ``frontend.device`` modes: ``cpu`` (the tasks decode, augment and
compute fbank) and ``worker`` (the tasks only read and crop int16; augmentation and features run
on the train worker's device). Per-CPU rates for every shipped space's own crops, augmentation
and features are timed in this process (one thread, the tasks' chunk of 32) and scaled by Ray
Data's measured per-CPU efficiency on the benchmark's config.

Demand: the trainer's own step (``train.loop.run_epoch``) on random features of the space's
random-length crops; in ``worker`` mode plus the batch front end (augment + fbank) on the same
device. On CUDA both are measured on the GPU (``--amp``); on a CPU-only machine the step is
measured on this CPU (for this machine's ratio) and the GPU sizing uses the H100 figure recorded
in RESULTS.md (``amp_epoch``), said so in the output.

Baseline in the same process: the demand; ratio = supply / demand (>= 1: the step never waits).
Sizing rule: data CPUs per GPU = ceil(GPU step crops/s / per-CPU supply crops/s); the step's
data-wait fraction at a given number of data CPUs is max(0, 1 - supply / demand).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))  # bare checkout

from speakertune.config import deep_merge, resolve  # noqa: E402
from speakertune.testing.local_ray import process_tree, renice, start_local_ray  # noqa: E402
from step_demand import demand, step_rate  # noqa: E402

SPACES = ("architectures", "ecapa_losses", "end_to_end", "pareto", "quickstart")
BENCH_SPACE = "ecapa_losses"  # ECAPA-TDNN C=512, batch 128, noise/reverb/SpecAugment
# RESULTS.md, amp_epoch on an NVIDIA H100 80GB: 56 steps x 128 crops (1.5-2.0 s) in 2.65 s with
# AMP off (the fastest mode at this size; bf16: 3.16 s = 2,268 crops/s), cached features, no
# front end on the device.
RECORDED_STEP = 56 * 128 / 2.65
RECORDED = "H100 recorded (amp_epoch, AMP off; bf16 2,268/s)"
CHUNK = 32  # utterances per Ray Data task (build_train_dataset's chunk_rows cap)


def data_cpus_needed(step_rate: float, per_cpu_rate: float) -> int:
    """Data CPUs that keep a step consuming ``step_rate`` crops/s fed when one CPU supplies
    ``per_cpu_rate`` crops/s: ``ceil(step_rate / per_cpu_rate)``, at least 1."""
    return max(1, math.ceil(step_rate / per_cpu_rate - 1e-9))


def data_wait_fraction(supply: float, demand: float) -> float:
    """Share of the step loop's time spent waiting for batches when ``supply`` crops/s feed a
    step that could consume ``demand`` crops/s, data loading overlapped with the step: a batch
    takes B/supply s of which B/demand compute, so the wait is 1 - supply/demand (0 if >= 1)."""
    return max(0.0, 1.0 - supply / demand)


# ------------------------------------------------------------------------------ configs
def space_configs(name: str, over: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """The space and one trial config per combination of its searched ``model.*`` choices
    (all other parameters at their base values), the corpus (and banks) replaced by ``over``'s
    (nested ``data``/``augment`` keys; the space's crop lengths kept)."""
    from speakertune.search.space import load_space

    space = load_space(name)
    grid = [(p.path, p.args) for p in space.params.values()
            if p.path.startswith("model.") and p.kind == "choice" and not p.when]  # fmt: skip
    flats = [dict(zip([g[0] for g in grid], combo))
             for combo in itertools.product(*[g[1] for g in grid])] or [{}]  # fmt: skip
    cfgs = []
    for flat in flats:
        cfg = space.trial_config(flat)
        keep = {k: cfg["data"][k] for k in ("min_seconds", "max_seconds")}
        cfg = deep_merge(deep_merge(cfg, over), {"data": keep})
        cfgs.append(resolve(cfg, {"trainer.use_gpu": False}))
    return space, cfgs


def model_tag(cfg: dict[str, Any]) -> str:
    m = cfg["model"]
    return f"{m['name']}" + (f" C={m['channels']}" if "channels" in m else "")


def with_mode(cfg: dict[str, Any], mode: str, **flat: Any) -> dict[str, Any]:
    return resolve(cfg, {"frontend.device": mode, **flat})


# ------------------------------------------------------------------------------- supply
def _columns(corpus, n: int) -> dict[str, np.ndarray]:
    df = corpus.train.iloc[np.arange(n) % len(corpus.train)]
    return {"utt": df["utt"].astype(str).to_numpy(), "uri": df["uri"].astype(str).to_numpy(),
            "label": df["label"].to_numpy(np.int64)}  # fmt: skip


def per_cpu_supply(corpus, cfg: dict[str, Any], n: int, min_s: float = 2.0) -> dict[str, float]:
    """Crops/s of one Ray Data task's work (``FrontEnd`` on chunks of 32) in this process on
    one thread, per mode: read + crop (+ augment + features in ``cpu`` mode). Passes over ``n``
    utterances alternate between the modes (same machine load) until each has ``min_s`` s,
    after an untimed pass (reads from the page cache: a cold disk or object storage adds its
    latency, which ``frontend.fetch_threads`` overlaps; see s3_shards.py)."""
    from speakertune.frontend.pipeline import FrontEnd

    torch.set_num_threads(1)
    fes = {m: FrontEnd(with_mode(cfg, m), corpus.num_classes, corpus.noise, corpus.rir,
                       corpus.storage_options) for m in ("cpu", "worker")}  # fmt: skip
    cols = _columns(corpus, n)
    t, passes = {m: 0.0 for m in fes}, {m: 0 for m in fes}
    for fe in fes.values():  # warm-up pass: files in the page cache, bank items decoded
        for i in range(0, n, CHUNK):
            fe({k: v[i : i + CHUNK] for k, v in cols.items()}, 0)
    for rnd in range(1, 100):  # each pass: new crops and augmentation draws
        for m in [m for m in fes if t[m] < min_s]:
            t0 = time.perf_counter()
            for i in range(0, n, CHUNK):
                fes[m]({k: v[i : i + CHUNK] for k, v in cols.items()}, rnd)
            t[m] += time.perf_counter() - t0
            passes[m] += 1
        if min(t.values()) >= min_s:
            break
    return {m: passes[m] * n / t[m] for m in fes}


def streamed_supply(corpus, cfg: dict[str, Any], mode: str, cpus: int,
                    epochs: int) -> tuple[float, float]:  # fmt: skip
    """Crops/s out of ``build_train_dataset`` with ``cpus`` data CPUs: per whole epoch, and
    steady (from each epoch's first batch to its last: without the epoch's start-up, which
    a large corpus amortises). Epoch 0 warms the pipeline up and is not counted."""
    from speakertune.frontend.stream import build_train_dataset

    ds = build_train_dataset(corpus, with_mode(cfg, mode, **{"trainer.data_cpus": cpus}), 0)
    whole, steady = [], []
    try:
        for epoch in range(1 + epochs):
            t0 = time.perf_counter()
            first = n = n_first = 0
            for b in ds.iter_batches(batch_size=CHUNK, batch_format="numpy"):
                n += len(b["label"])
                if not first:
                    first, n_first = time.perf_counter(), n
            t1 = time.perf_counter()
            print(f"  supply {mode:6s} {cpus} CPU(s) epoch {epoch}: {n} crops in "
                  f"{t1 - t0:.2f} s", flush=True)  # fmt: skip
            if epoch:
                whole.append(n / (t1 - t0))
                steady.append((n - n_first) / max(t1 - first, 1e-9))
    finally:
        ds.skip_counter.close()
    return float(np.mean(whole)), float(np.mean(steady))


# ------------------------------------------------------------------------------- demand
def device_frontend_rate(corpus, cfg: dict[str, Any], device: torch.device, rounds: int) -> float:
    """Crops/s of the train worker's batch front end (augment + features, ``worker`` mode) on
    ``device``, on one batch of ``trainer.batch_size`` real crops with their random plans."""
    from speakertune.frontend.pipeline import FrontEnd, stack_rows
    from speakertune.frontend.stream import worker_frontend

    wcfg = with_mode(cfg, "worker")
    bs = int(cfg["trainer"]["batch_size"])
    reader = FrontEnd(wcfg, corpus.num_classes, corpus.noise, corpus.rir, corpus.storage_options)
    raw = stack_rows(reader.read(_columns(corpus, bs), 0)[0])
    fe = worker_frontend({"cfg": wcfg, "noise_df": corpus.noise, "rir_df": corpus.rir,
                          "storage_options": corpus.storage_options}, device)  # fmt: skip
    fe(raw)  # warm-up: bank audio decoded and moved to the device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(rounds):
        fe(raw)
    sync()
    return rounds * len(raw["label"]) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------- sizing
def size_space(name: str, corpus, over: dict[str, Any], eff: dict[str, float], n: int,
               gpu: torch.device | None, amps: list[str], steps: int) -> dict[str, Any]:
    """One space: per-CPU supply for its data config (both modes), its step's demand (the
    fastest of its model choices; GPU spaces: measured on ``gpu``, else the recorded H100
    figure), the data CPUs that demand needs per GPU (per train worker on CPU trainers)."""
    space, cfgs = space_configs(name, over)
    print(f"  sizing {name}: {len(cfgs)} model choice(s)", flush=True)
    res = space.resources
    on_gpu = float(res.get("gpus_per_worker", 0)) > 0
    units = int(res.get("num_workers", 1)) * (max(1, int(res.get("gpus_per_worker", 1)))
                                              if on_gpu else 1)  # fmt: skip
    default = "worker" if on_gpu else "cpu"  # what frontend.device: auto picks
    supply = {m: r * eff[m] for m, r in per_cpu_supply(corpus, cfgs[0], n).items()}
    if on_gpu and gpu is None:
        rates = {m: RECORDED_STEP for m in ("cpu", "worker")}
        tag = (f"{len(cfgs)} models: the ECAPA C=512 figure for all" if len(cfgs) > 1
               else model_tag(cfgs[0]))
        source = RECORDED
    else:
        dev = gpu if on_gpu else torch.device("cpu")
        torch.set_num_threads(max(1, int(res.get("cpus_per_worker", 1))))
        steps_ = [(max(step_rate(c, dev, a, steps) for a in (amps if on_gpu else ["off"])), c)
                  for c in cfgs]  # fmt: skip
        step, c = max(steps_, key=lambda p: p[0])  # the fastest model needs the most data
        rates = demand(step, device_frontend_rate(corpus, c, dev, rounds=2))
        tag = model_tag(c) + (f" (fastest of {len(cfgs)})" if len(cfgs) > 1 else "")
        source = (f"measured, {torch.cuda.get_device_name(dev)}" if on_gpu
                  else f"measured, this CPU, {torch.get_num_threads()} thread(s)")
    set_per = float(res.get("data_cpus", 1)) / units
    out = {"space": name, "model": tag, "source": source, "default": default, "on_gpu": on_gpu,
           "set_per_unit": set_per, "units": units,
           "crops": f"{cfgs[0]['data']['min_seconds']}-{cfgs[0]['data']['max_seconds']} s",
           "augment": _aug(cfgs[0])}  # fmt: skip
    for m in ("cpu", "worker"):
        out[m] = {"per_cpu": supply[m], "demand": rates[m],
                  "need": data_cpus_needed(rates[m], supply[m]),
                  "wait": data_wait_fraction(set_per * supply[m], rates[m])}  # fmt: skip
    return out


def _aug(cfg: dict[str, Any]) -> str:
    a = cfg["augment"]
    on = [f"{k[:-5]} {a[k]:g}" for k in ("noise_prob", "babble_prob", "reverb_prob",
                                         "speed_prob", "specaug_prob") if a[k]]  # fmt: skip
    return (", ".join(on) or "none") + f"; fbank {cfg['features'].get('num_mel_bins')}"


# --------------------------------------------------------------------------------- main
def measure_stream(corpus, cfg: dict[str, Any], cpus: list[int],
                   epochs: int) -> dict[tuple[str, int], tuple[float, float]]:  # fmt: skip
    """Ray Data supply for both modes and each N in ``cpus``; empty when Ray cannot start."""
    import ray

    if not start_local_ray(max(cpus)):
        return {}
    try:
        out = {}
        for m, n in itertools.product(("cpu", "worker"), cpus):
            out[(m, n)] = streamed_supply(corpus, cfg, m, n, epochs)
            renice(process_tree(), os.getpriority(os.PRIO_PROCESS, 0))  # new workers
        return out
    finally:
        ray.shutdown()


def print_machine(stream, inproc, bench, eff, device: str, cpus: list[int]) -> None:
    """This machine's supply / demand: Ray Data streamed (or, when Ray could not start, the
    in-process per-CPU rate x N, marked as such)."""
    rows = stream or {(m, n): (inproc[m] * n, inproc[m] * n)
                      for m in ("cpu", "worker") for n in cpus}  # fmt: skip
    how = "Ray Data" if stream else "NOT streamed: in-process per-CPU x N"
    print(f"\n| mode | data CPUs | supply crops/s, {how} (epoch / steady) | per CPU (steady) | "
          f"demand crops/s ({device}) | supply / demand | data wait |")
    print("|---|---|---|---|---|---|---|")
    for (m, n), (whole, steady) in rows.items():
        print(f"| {m} | {n} | {whole:.1f} / {steady:.1f} | {steady / n:.1f} | {bench[m]:.1f} | "
              f"{steady / bench[m]:.2f} | {100 * data_wait_fraction(steady, bench[m]):.0f}% |")
    print(f"\nstep alone {bench['step']:.1f} crops/s; batch front end on the same device "
          f"{bench['frontend']:.1f} crops/s (worker mode pays both)")
    print("\n| mode | per-CPU crops/s in-process (1 thread) | Ray Data per-CPU efficiency |")
    print("|---|---|---|")
    for m in ("cpu", "worker"):
        print(f"| {m} | {inproc[m]:.1f} | {eff[m]:.2f}{'' if stream else ' (assumed)'} |")


def print_sizing(rows: list[dict[str, Any]]) -> None:
    print("\n| space | model (step) | crops, augment | step crops/s per GPU | mode (auto) | per-CPU"
          " supply | data CPUs per GPU needed | set per GPU | data wait at set | other mode: "
          "needed, wait |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, o = r["default"], "cpu" if r["default"] == "worker" else "worker"
        unit = "" if r["on_gpu"] else " (CPU trainer: per train worker)"
        print(f"| {r['space']}{unit} | {r['model']} | {r['crops']}; {r['augment']} | "
              f"{r[d]['demand']:.0f} ({r['source']}) | {d} | {r[d]['per_cpu']:.1f} | "
              f"{r[d]['need']} | {r['set_per_unit']:g} | {100 * r[d]['wait']:.0f}% | "
              f"{o}: {r[o]['need']}, {100 * r[o]['wait']:.0f}% |")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 x 10 utterances, 2 steps")
    ap.add_argument("--cpus", type=int, nargs="+", default=None, help="data CPUs (default 1 2)")
    ap.add_argument("--speakers", type=int, default=30)
    ap.add_argument("--utts", type=int, default=10, help="utterances per speaker")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (CPU 2, GPU 20)")
    ap.add_argument("--amp", nargs="+", default=["bf16"], help="GPU step: fastest of these")
    ap.add_argument("--epochs", type=int, default=2, help="timed Ray Data epochs")
    ap.add_argument("--no-stream", action="store_true", help="skip Ray Data (in-process only)")
    ap.add_argument("--spaces", nargs="*", default=list(SPACES))
    ap.add_argument("--root", default=None, help="synthetic corpus cache directory")
    ap.add_argument("--manifest", default=None, help="a prepared corpus instead of the "
                    "synthetic one (a machine without espeak: benchmarks/gpu/make_corpus.py)")
    ap.add_argument("--banks", default=None, help="DIR with noise/ and rir/ banks "
                    "(make_corpus.py --banks) instead of the built-in ones")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    from speakertune.data.corpus import load_corpus

    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda") if cuda else None
    torch.backends.cudnn.benchmark = False  # random-length crops: see amp_epoch.py
    spk, utts = (20, 10) if args.quick else (args.speakers, args.utts)
    steps = args.steps or (20 if cuda else 2)
    cpus = args.cpus or [c for c in (1, 2) if c <= (os.cpu_count() or 1)]
    root = args.root or str(Path(tempfile.gettempdir()) / f"speakertune-bench-{spk}x{utts}")
    over: dict[str, Any] = {"data": {"corpus": "synthetic", "root": root, "speakers": spk,
                                     "utts_per_speaker": utts, "val_speakers": 2}}  # fmt: skip
    if args.manifest:
        over["data"] = {"corpus": "manifest", "manifest": args.manifest, "val_speakers": 8}
        root = args.manifest
    if args.banks:
        over["augment"] = {"noise_bank": f"{args.banks}/noise", "rir_bank": f"{args.banks}/rir"}
    corpus = load_corpus(resolve(over)["data"])
    n = len(corpus.train)
    cfg = space_configs(BENCH_SPACE, over)[1][0]
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {min(2, os.cpu_count() or 1)} thr"
    print(f"corpus: {n} train utterances at {root}; bench config {BENCH_SPACE}: "
          f"{model_tag(cfg)}, batch {cfg['trainer']['batch_size']}, crops "
          f"{cfg['data']['min_seconds']}-{cfg['data']['max_seconds']} s, {_aug(cfg)}; "
          f"step on {where}", flush=True)  # fmt: skip
    stream = {} if args.no_stream else measure_stream(corpus, cfg, cpus, args.epochs)
    inproc = per_cpu_supply(corpus, cfg, n, min_s=4.0)
    lo = min(cpus)
    eff = ({m: stream[(m, lo)][1] / lo / inproc[m] for m in inproc} if stream
           else {"cpu": 1.0, "worker": 1.0})  # fmt: skip
    dev = gpu or torch.device("cpu")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    step = max(step_rate(cfg, dev, a, steps) for a in (args.amp if cuda else ["off"]))
    fe = device_frontend_rate(corpus, cfg, dev, 2)
    bench = {**demand(step, fe), "step": step, "frontend": fe}
    if not stream:
        print("Ray did not start: no streamed figures; sizing uses the in-process per-CPU rates")
    print_machine(stream, inproc, bench, eff, "GPU" if cuda else "this CPU", cpus)
    rows = [size_space(s, corpus, over, eff, min(n, 2 * CHUNK), gpu, args.amp, steps)
            for s in args.spaces]  # fmt: skip
    print_sizing(rows)
    print("\nrule: data CPUs per GPU = ceil(step crops/s / per-CPU supply crops/s); per trial x "
          "num_workers x gpus_per_worker. Per-CPU supply = in-process rate x Ray efficiency. "
          + ("" if cuda else f"No GPU here: GPU spaces use the {RECORDED} figure "
             f"{RECORDED_STEP:.0f} crops/s (ECAPA C=512, batch 128, no front end on the device)."))
    return summary(stream, inproc, bench, eff, rows, cuda, lo, where)


def summary(stream, inproc, bench, eff, rows, cuda: bool, lo: int, where: str) -> int:
    hi = max((k[1] for k in stream), default=lo)
    sup = {m: stream[(m, hi)][1] if stream else inproc[m] * hi for m in ("cpu", "worker")}
    gpu_step = {m: bench[m] if cuda else RECORDED_STEP for m in sup}
    per = {m: inproc[m] * eff[m] for m in sup}
    need = {m: data_cpus_needed(gpu_step[m], per[m]) for m in per}
    print("\n| benchmark | ours | baseline | ratio | notes |")
    print("|---|---|---|---|---|")
    how = "Ray Data" if stream else "in-process x N (Ray did not start)"
    print(f"| supply_demand: {how} crops/s with {hi} data CPUs / ECAPA C=512 b128 step | "
          f"worker mode {sup['worker']:.0f}/s (cpu mode {sup['cpu']:.0f}/s) | step "
          f"{bench['worker']:.2f}/s incl. front end ({bench['cpu']:.2f}/s alone), {where} | "
          f"{sup['worker'] / bench['worker']:.2f}x (cpu mode {sup['cpu'] / bench['cpu']:.2f}x) | "
          f"per data CPU {per['worker']:.0f} / {per['cpu']:.0f} crops/s -> "
          f"{need['worker']} / {need['cpu']} data CPUs per GPU at "
          f"{gpu_step['worker']:.0f} / {gpu_step['cpu']:.0f} crops/s "
          f"({'measured' if cuda else 'H100 recorded'}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
