"""Mixed precision on a GPU: one training epoch with amp off vs bf16 vs fp16 — time per epoch,
peak GPU memory (torch.cuda.max_memory_allocated) and the validation EER after training.

The training step is the trainer's own (``speakertune.train.loop.run_epoch``: autocast,
GradScaler for fp16, clipping, LR schedule, margin warm-up), run in one process on features
cached in an ``.npz`` so that a bare GPU machine needs only torch, numpy, pandas and scipy (no
Ray, no audio stack). Two steps:

    python benchmarks/sizing/amp_epoch.py --export data/amp_feats.npz  # anywhere: corpus -> cache
    python benchmarks/sizing/amp_epoch.py --features data/amp_feats.npz [--quick]  # on the GPU

Baseline = amp off in the same process; ratio = time(off) / time(mode). On a machine without
CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))  # bare checkout

from speakertune.config import resolve  # noqa: E402

# The product's default encoder (ECAPA-TDNN C=512, attentive stats, AAM-softmax).
RUN_ALL_SKIP = "needs a GPU and a feature cache (--export first)"

CFG = {"trainer": {"batch_size": 128, "grad_clip": 5.0},
       "scheduler": {"name": "cosine", "warmup_epochs": 1, "margin_warmup_epochs": 1}}
TRAIN_FRAMES = 200  # stored crop per training utterance (2 s)
VAL_FRAMES = 300


def export(path: Path, max_train: int, val_per_spk: int) -> None:
    """Cache fbank features of the default synthetic corpus: fixed 2-s crops of training
    utterances, validation utterances up to 3 s, the trial list."""
    from speakertune.data.audio import load_audio
    from speakertune.data.corpus import load_corpus
    from speakertune.frontend.pipeline import extract_features

    cfg = resolve(CFG)
    corpus = load_corpus(cfg["data"])
    sr = int(cfg["data"]["sample_rate"])
    train = corpus.train.sample(frac=1.0, random_state=0).head(max_train)
    val = corpus.val.groupby("spk", sort=True).head(val_per_spk)
    keep = set(val["utt"])
    trials = corpus.trials[corpus.trials["enroll"].isin(keep) & corpus.trials["test"].isin(keep)]

    def feats(uri: str, frames: int) -> np.ndarray:
        f = extract_features(load_audio(uri, sr, corpus.storage_options), cfg).numpy()
        if f.shape[0] < frames:  # tile short utterances up to the crop
            f = np.tile(f, (int(np.ceil(frames / f.shape[0])), 1))
        start = (f.shape[0] - frames) // 2
        return f[start : start + frames].astype(np.float16)

    x = np.stack([feats(u, TRAIN_FRAMES) for u in train["uri"]])
    val_feats = [feats(u, VAL_FRAMES) for u in val["uri"]]
    def text(col) -> np.ndarray:  # fixed-width unicode: loads without pickle
        return np.asarray(col.astype(str).tolist(), dtype=str)

    np.savez(
        path, train=x, label=train["label"].to_numpy(np.int64), train_spk=text(train["spk"]),
        num_classes=corpus.num_classes, val=np.stack(val_feats), val_utt=text(val["utt"]),
        enroll=text(trials["enroll"]), test=text(trials["test"]),
        trial_label=trials["label"].to_numpy(np.int64),
    )
    print(f"wrote {path}: {x.shape[0]} training crops, {len(val_feats)} validation utterances, "
          f"{len(trials)} trials, {path.stat().st_size / 2**20:.1f} MiB")


def run_mode(data: dict, mode: str, epochs: int, passes: int, device: torch.device) -> dict:
    import pandas as pd
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder
    from speakertune.scoring.embed import embed_features
    from speakertune.scoring.verification import score_backends
    from speakertune.train.loop import SpeakerNet, run_epoch
    from speakertune.train.optim import build_optimizer, build_scheduler
    from speakertune.train.precision import autocast, grad_scaler, resolve_amp

    cfg = resolve(CFG, {"trainer.amp": mode})
    t = cfg["trainer"]
    torch.manual_seed(0)
    feat_dim = data["train"].shape[2]
    encoder = build_encoder(cfg["model"], cfg["pooling"], feat_dim, int(cfg["embed_dim"]))
    loss = build_loss(cfg["loss"], int(cfg["embed_dim"]), int(data["num_classes"]))
    net = SpeakerNet(encoder, loss).to(device)
    n = data["train"].shape[0]
    bs = int(t["batch_size"])
    steps = passes * (n // bs)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"], epochs=epochs, steps_per_epoch=steps)
    amp = resolve_amp(mode, device)
    scaler = grad_scaler(amp, device)
    train_x = torch.from_numpy(data["train"])  # fp16 on the host; cast per batch
    train_y = torch.from_numpy(data["label"])
    rng = np.random.default_rng(0)

    def batches():
        for _ in range(passes):
            order = rng.permutation(n)
            for i in range(0, n - bs + 1, bs):
                idx = torch.from_numpy(order[i : i + bs])
                length = int(rng.integers(150, TRAIN_FRAMES + 1))  # random-length egs
                yield train_x[idx, :length].float(), train_y[idx]

    cuda = device.type == "cuda"
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(epochs):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        stats = run_epoch(net, net, batches(), optimizer=optimizer, scheduler=scheduler,
                          scaler=scaler, amp=amp, device=device, epoch=epoch,
                          steps_per_epoch=steps, total_steps=epochs * steps,
                          margin_warmup=float(cfg["scheduler"]["margin_warmup_epochs"]),
                          clip=float(t["grad_clip"]))
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        print(f"  amp={mode:4s} epoch {epoch + 1}: {times[-1]:.2f} s, {stats['steps']} steps, "
              f"loss {stats['loss_sum'] / stats['count']:.3f}", flush=True)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    ctx = autocast(amp, device)
    val = {u: torch.from_numpy(f).float() for u, f in zip(data["val_utt"], data["val"])}
    fit_idx = np.arange(0, n, max(1, n // 800))
    fit = {f"tr{i}": train_x[i].float() for i in fit_idx}
    spk = {f"tr{i}": str(data["train_spk"][i]) for i in fit_idx}
    trials = pd.DataFrame({"enroll": data["enroll"], "test": data["test"],
                           "label": data["trial_label"]})
    res = score_backends(embed_features(encoder, fit, device=device, autocast=ctx), spk,
                         embed_features(encoder, val, device=device, autocast=ctx), trials,
                         cfg["backend"], "best")
    timed = times[1:] or times  # the first epoch pays for cuDNN autotuning and allocation
    return {"mode": mode, "epoch_s": float(np.mean(timed)), "peak_mib": peak,
            "eer": res.metrics["val_eer"], "eer_cosine": res.metrics["val_eer_cosine"],
            "eer_plda": res.metrics["val_eer_plda"], "steps": steps, "batch": bs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, help="write the feature cache here and exit")
    ap.add_argument("--features", type=Path, default=Path("data/amp_feats.npz"))
    ap.add_argument("--max-train", type=int, default=1000)
    ap.add_argument("--val-per-spk", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 epochs of 2 passes")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--passes", type=int, default=8, help="passes over the cache per epoch")
    ap.add_argument("--modes", nargs="+", default=["off", "bf16", "fp16"])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run on the CPU anyway (a check of the script, not a measurement)")
    args = ap.parse_args()
    if args.export:
        export(args.export, args.max_train, args.val_per_spk)
        return 0
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no GPU (torch.cuda.is_available() is False): nothing to measure; "
              "run this on a CUDA machine")
        print("| amp_epoch | n/a | n/a | n/a | no GPU on this machine |")
        return 0
    if args.quick:
        args.epochs, args.passes = 2, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Off: random-length crops give a new input shape nearly every batch, and cuDNN's
    # autotuner would re-benchmark (minutes, and tens of GiB of workspace) for each one.
    torch.backends.cudnn.benchmark = False
    with np.load(args.features, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if args.cpu_smoke:  # a few batches are enough to exercise every code path
        data["train"], data["label"] = data["train"][:256], data["label"][:256]
        data["train_spk"] = data["train_spk"][:256]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    print(f"{gpu}: {data['train'].shape[0]} crops x {args.passes} passes per epoch, "
          f"{args.epochs} epochs per mode", flush=True)
    rows = [run_mode(data, m, args.epochs, args.passes, device) for m in args.modes]
    base = next(r for r in rows if r["mode"] == "off")
    print("\n| amp | time / epoch (s) | speed-up vs off | peak GPU memory (MiB) | "
          "EER cosine | EER PLDA |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['epoch_s']:.2f} | {base['epoch_s'] / r['epoch_s']:.2f}x | "
              f"{r['peak_mib']:.0f} | {100 * r['eer_cosine']:.2f}% | {100 * r['eer_plda']:.2f}% |")
    best = min((r for r in rows if r["mode"] != "off"), key=lambda r: r["epoch_s"], default=base)
    print("\n| benchmark | ours | baseline | ratio | notes |")
    print("|---|---|---|---|---|")
    print(f"| amp_epoch | {best['mode']}: {best['epoch_s']:.2f} s/epoch, "
          f"{best['peak_mib']:.0f} MiB, "
          f"EER {100 * best['eer']:.1f}% | off: {base['epoch_s']:.2f} s/epoch, "
          f"{base['peak_mib']:.0f} MiB, EER {100 * base['eer']:.1f}% | "
          f"{base['epoch_s'] / best['epoch_s']:.2f}x | {gpu}, ECAPA C=512, batch {base['batch']}, "
          f"{base['steps']} steps/epoch |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
