"""Scoring speed and agreement against baselines run in the same process.

1. EER + minDCF(0.01) + minDCF(0.001) on N trials: ``speakertune.scoring.metrics`` (one sort for all
   three) against the usual scikit-learn ``roc_curve``-based computation.
2. PLDA fit and scoring time, and the EER reached, against SpeechBrain's PLDA
   (``speechbrain.processing.PLDA_LDA``) on the same synthetic speaker embeddings.

    .venv/bin/python benchmarks/compare/scoring.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from sklearn.metrics import roc_curve
from speakertune.scoring.backends import CosineBackend, PLDABackend
from speakertune.scoring.metrics import eer, verification_report
from threadpoolctl import threadpool_limits


def timed(fn, *args, repeat: int = 1, **kw):
    """Best wall time of ``repeat`` runs (the machine is shared: the minimum is the least noisy)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return out, best


def sklearn_report(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    d = fnr - fpr
    i = int(np.flatnonzero(d <= 0)[0])
    a = d[i - 1] / (d[i - 1] - d[i])
    out = {"eer": fpr[i - 1] + a * (fpr[i] - fpr[i - 1])}
    for p in (0.01, 0.001):
        out[f"min_dcf_{p:g}"] = float((p * fnr + (1 - p) * fpr).min() / min(p, 1 - p))
    return out


def bench_metrics(n: int, repeat: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.1).astype(np.int8)
    # 4-decimal scores: realistic for written score files, and full of ties
    scores = np.round(rng.normal(size=n) + 2.0 * labels, 4)
    ours, t_ours = timed(verification_report, scores, labels, repeat=repeat)
    ref, t_ref = timed(sklearn_report, scores, labels, repeat=repeat)
    worst = max(abs(ours[k] - ref[k]) for k in ref)
    print(f"\n## EER + minDCF(0.01) + minDCF(0.001), {n:,} trials (best of {repeat})")
    print("| implementation | time (s) | EER (%) | minDCF(0.01) | minDCF(0.001) |")
    print("|---|---|---|---|---|")
    rows = (("speakertune.scoring.metrics", ours, t_ours), ("sklearn roc_curve", ref, t_ref))
    for name, r, t in rows:
        print(f"| {name} | {t:.3f} | {100 * r['eer']:.4f} | {r['min_dcf_0.01']:.5f} | "
              f"{r['min_dcf_0.001']:.5f} |")
    print(f"max |difference| = {worst:.2e}; speed-up x{t_ref / t_ours:.2f}")
    assert worst < 1e-6, "metrics disagree with scikit-learn"
    return t_ours, t_ref


def synthetic_embeddings(rng, n_spk: int, n_utt: int, dim: int, b_half, w_half, offset):
    """Two-covariance speaker embeddings pushed through a mild non-linearity (tanh), so that
    neither PLDA model is exactly right."""
    y = rng.normal(size=(n_spk, dim)) @ b_half
    x = np.repeat(y, n_utt, 0) + rng.normal(size=(n_spk * n_utt, dim)) @ w_half
    return np.tanh(0.5 * (x + offset)), np.repeat(np.arange(n_spk), n_utt)


def trial_pairs(rng, spk: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = rng.integers(0, spk.size, n)
    by_spk = {s: np.flatnonzero(spk == s) for s in np.unique(spk)}
    same = rng.random(n) < 0.5
    t = np.where(same, [rng.choice(by_spk[spk[i]]) for i in e], rng.integers(0, spk.size, n))
    keep = e != t
    return e[keep], t[keep], (spk[e[keep]] == spk[t[keep]]).astype(int)


def speechbrain_plda(train, train_spk, test, e_idx, t_idx, rank_f: int):
    from speechbrain.processing.PLDA_LDA import PLDA, Ndx, StatObject_SB, fast_PLDA_scoring

    def stat(x, ids):
        ids = np.array([str(i) for i in ids], dtype="|O")
        none = np.array([None] * len(x))
        return StatObject_SB(modelset=ids, segset=np.array([f"g{i}" for i in range(len(x))],
                             dtype="|O"), start=none, stop=none,
                             stat0=np.ones((len(x), 1)), stat1=x.astype(np.float64))

    t0 = time.perf_counter()
    plda = PLDA(rank_f=rank_f, nb_iter=10)
    plda.plda(stat(train, train_spk))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ue, ut = np.unique(e_idx), np.unique(t_idx)
    names_e = np.array([f"e{i}" for i in ue], dtype="|O")
    names_t = np.array([f"t{i}" for i in ut], dtype="|O")
    en = stat(test[ue], names_e)
    en.segset = names_e
    te = stat(test[ut], names_t)
    te.segset = names_t
    te.modelset = names_t
    ndx = Ndx(models=names_e, testsegs=names_t)
    res = fast_PLDA_scoring(en, te, ndx, plda.mean, plda.F, plda.Sigma)
    # SpeechBrain re-orders rows/columns to its sorted model/segment lists: look names up.
    row = {m: i for i, m in enumerate(res.modelset)}
    col = {g: i for i, g in enumerate(res.segset)}
    scores = res.scoremat[[row[f"e{i}"] for i in e_idx], [col[f"t{i}"] for i in t_idx]]
    return scores, t_fit, time.perf_counter() - t0


def bench_plda(n_spk: int, n_utt: int, dim: int, n_trials: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(1)
    # speaker variability in about half of the directions, weaker than the session noise
    b_half = rng.normal(size=(dim, dim)) * (rng.random(dim) < 0.5) * 0.35 / np.sqrt(dim)
    w_half = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    offset = rng.normal(size=dim) * 0.5
    train, train_spk = synthetic_embeddings(rng, n_spk, n_utt, dim, b_half, w_half, offset)
    test, test_spk = synthetic_embeddings(rng, 200, 8, dim, b_half, w_half, offset)
    e_idx, t_idx, labels = trial_pairs(rng, test_spk, n_trials)

    t0 = time.perf_counter()
    ours = PLDABackend(lda_dim=128).fit(train, train_spk)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    space = ours.transform(test)  # each utterance once, as score_trials does
    s_ours = ours.score_indexed(space, space, e_idx, t_idx)
    t_score = time.perf_counter() - t0
    rank = min(100, dim)
    s_sb, sb_fit, sb_score = speechbrain_plda(train, train_spk, test, e_idx, t_idx, rank)
    e_ours, e_sb = eer(s_ours, labels)[0], eer(s_sb, labels)[0]
    e_cos = eer(CosineBackend().fit(train).score(test[e_idx], test[t_idx]), labels)[0]
    print(f"\n## PLDA: {n_spk} training speakers x {n_utt} utterances, dim {dim}, "
          f"{len(labels):,} trials")
    print("| implementation | fit (s) | score (s) | EER (%) |")
    print("|---|---|---|---|")
    print(f"| speakertune two-cov EM (LDA 128, whiten, len-norm) | {t_fit:.2f} | "
          f"{t_score:.3f} | {100 * e_ours:.2f} |")
    print(f"| SpeechBrain PLDA (rank {rank}, 10 iters) | {sb_fit:.2f} | {sb_score:.3f} | "
          f"{100 * e_sb:.2f} |")
    print(f"(cosine with mean subtraction on the same trials: EER {100 * e_cos:.2f}%)")
    print(f"fit speed-up x{sb_fit / t_fit:.1f}, score speed-up x{sb_score / t_score:.1f}")
    return t_fit, sb_fit, 100 * e_ours, 100 * e_sb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M trials and a smaller PLDA set")
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS threads for the PLDA part")
    args = ap.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"Python {platform.python_version()}")
    n = 1_000_000 if args.quick else 10_000_000
    t_ours, t_ref = bench_metrics(n, repeat=3 if args.quick else 2)
    # OpenBLAS spin-waits for its threads; on a shared 2-core machine that made every matrix
    # product several times slower and very noisy. Both PLDAs run under the same limit.
    with threadpool_limits(args.blas_threads):
        print(f"BLAS threads: {args.blas_threads}; torch threads: {torch.get_num_threads()}")
        if args.quick:
            p_fit, sb_fit, e_ours, e_sb = bench_plda(300, 10, 192, 20_000)
        else:
            p_fit, sb_fit, e_ours, e_sb = bench_plda(1000, 10, 192, 100_000)
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(f"| scoring | EER+2xminDCF {n / 1e6:g}M trials {t_ours:.2f}s | sklearn roc_curve "
          f"{t_ref:.2f}s | x{t_ref / t_ours:.2f} | PLDA fit {p_fit:.2f}s vs SpeechBrain "
          f"{sb_fit:.2f}s (x{sb_fit / p_fit:.1f}), EER {e_ours:.2f}% vs {e_sb:.2f}% |")


if __name__ == "__main__":
    main()
