"""Does a small ECAPA-TDNN beat chance on the default synthetic corpus within a few CPU minutes?

Trains one configuration through Ray Train (the product's trainer, on CPU) and compares its
validation EER with the baseline of the same encoder untrained (random initialisation), scored
on the same trial list by the same cosine and PLDA backends in this process.
Ratio = baseline EER / trained EER (how many times fewer errors training buys).

    python benchmarks/compare/train_quality.py [--quick] [--epochs N] [--storage runs]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from speakertune.config import resolve

SMALL_ECAPA = {
    "model": {"name": "ecapa_tdnn", "channels": 128},
    "pooling": {"name": "attentive_stats"},
    "embed_dim": 128,
    "loss": {"name": "aam_softmax", "margin": 0.2, "scale": 30.0},
    "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 2e-5},
    "scheduler": {"name": "cosine", "warmup_epochs": 1, "margin_warmup_epochs": 2},
    "trainer": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "batch_size": 32,
                "val_max_seconds": 4.0, "plda_utts": 800},
}


def untrained_eer(cfg: dict) -> dict[str, float]:
    """Validation metrics of the randomly initialised encoder (same seed as the trial)."""
    from speakertune.data.corpus import load_corpus
    from speakertune.data.plda_sample import plda_sample
    from speakertune.frontend.features import feature_dim
    from speakertune.models import build_encoder
    from speakertune.scoring.embed import embed_features
    from speakertune.scoring.embed import load_features as load_eval_features
    from speakertune.scoring.verification import score_backends

    corpus = load_corpus(cfg["data"])
    torch.manual_seed(int(cfg["trainer"]["seed"]))
    enc = build_encoder(cfg["model"], cfg["pooling"], feature_dim(cfg), int(cfg["embed_dim"]))
    max_s = cfg["trainer"]["val_max_seconds"]
    t = cfg["trainer"]
    sample = plda_sample(corpus.train, int(t["plda_utts"]), int(t["plda_utts_per_speaker"]),
                         int(t["seed"]))
    val = load_eval_features(corpus.val, cfg, max_seconds=max_s)
    fit = load_eval_features(sample, cfg, max_seconds=max_s)
    spk = dict(zip(sample["utt"].astype(str), sample["spk"].astype(str)))
    res = score_backends(embed_features(enc, fit.feats), spk, embed_features(enc, val.feats),
                         corpus.trials, cfg["backend"], cfg["trainer"]["val_backend"])
    return res.metrics


def plot_curve(history: list[dict], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("val_eer_cosine", "cosine"), ("val_eer_plda", "PLDA")):
        ax.plot(epochs, [100 * h[key] for h in history], marker="o", label=label)
    ax.axhline(100 * baseline, color="grey", ls="--", label="untrained")
    ax.axhline(25, color="red", ls=":", label="25% target")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation EER (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--storage", default="runs")
    args = ap.parse_args()
    epochs = args.epochs or (3 if args.quick else 6)
    cfg = resolve(SMALL_ECAPA, {"trainer.epochs": epochs})

    import ray
    from speakertune.train.driver import train

    ray.init(include_dashboard=False, log_to_driver=True)
    t0 = time.perf_counter()
    base = untrained_eer(cfg)
    t_base = time.perf_counter() - t0
    print(f"untrained encoder: EER cosine {100 * base['val_eer_cosine']:.2f}%  "
          f"PLDA {100 * base['val_eer_plda']:.2f}%  ({t_base:.0f} s)", flush=True)
    t0 = time.perf_counter()
    out = train(cfg, storage_path=args.storage, name=time.strftime("train_quality_%H%M%S"))
    wall = time.perf_counter() - t0
    ray.shutdown()

    history = out["history"]
    png = Path(out["run_dir"]) / "train_quality.png"
    plot_curve(history, base["val_eer"], png)
    (Path(out["run_dir"]) / "train_quality.json").write_text(
        json.dumps({"baseline": base, "history": history, "wall_s": wall}, indent=2))
    print("\n| epoch | loss | acc | EER cosine | EER PLDA | minDCF PLDA | epoch s |")
    print("|---|---|---|---|---|---|---|")
    for h in history:
        print(f"| {h['epoch']} | {h['train_loss']:.3f} | {h['train_acc']:.3f} | "
              f"{100 * h['val_eer_cosine']:.2f}% | {100 * h['val_eer_plda']:.2f}% | "
              f"{h['val_min_dcf_plda']:.3f} | {h['epoch_time_s']:.0f} |")
    eer = out["val_eer"]
    # The cosine ratio is the headline: PLDA fitted on an untrained encoder's embeddings already
    # separates the synthetic speakers well, so "best backend" understates what training buys.
    ratio = base["val_eer_cosine"] / max(out["val_eer_cosine"], 1e-9)
    ratio_best = base["val_eer"] / max(eer, 1e-9)
    verdict = "PASS" if eer < 0.25 else "FAIL"
    print(f"\n{verdict}: validation EER {100 * eer:.2f}% (target < 25%) after {epochs} epochs "
          f"in {wall:.0f} s wall; untrained {100 * base['val_eer']:.2f}%; plot {png}")
    print("\n| benchmark | ours | baseline | ratio | notes |")
    print("|---|---|---|---|---|")
    print(f"| train_quality | EER cosine {100 * out['val_eer_cosine']:.2f}%, "
          f"PLDA {100 * out['val_eer_plda']:.2f}% after {epochs} epochs, {wall:.0f} s | "
          f"untrained: cosine {100 * base['val_eer_cosine']:.2f}%, "
          f"PLDA {100 * base['val_eer_plda']:.2f}% | {ratio:.1f}x (cosine), "
          f"{ratio_best:.1f}x (best backend) | ECAPA C=128, {out['num_params']:,} params, "
          f"1 CPU worker, {verdict} (<25%) |")
    return 0 if np.isfinite(eer) else 1


if __name__ == "__main__":
    raise SystemExit(main())
