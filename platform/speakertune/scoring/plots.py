"""Pictures of results: DET curves (normal-deviate axes) and t-SNE of embeddings, as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from speakertune.data.storage import written_aside
from speakertune.scoring.metrics import eer_from_rates, error_rates  # noqa: E402

_TICKS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9]


def _label(p: float) -> str:
    return f"{100 * p:g}"


def plot_det(
    systems: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "DET"
) -> Path:
    """One DET curve per system (``name -> (scores, labels)``) on one figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    lo, worst = 1e-3, 0.0
    for name, (scores, labels) in systems.items():
        p_miss, p_fa, thr = error_rates(scores, labels)
        e, _ = eer_from_rates(p_miss, p_fa, thr)
        worst = max(worst, e)
        # Probabilities of exactly 0 or 1 sit at infinity on normal-deviate axes: clip.
        ax.plot(
            norm.ppf(np.clip(p_fa, lo / 2, 1 - lo / 2)),
            norm.ppf(np.clip(p_miss, lo / 2, 1 - lo / 2)),
            label=f"{name} (EER {100 * e:.2f}%)",
        )
    hi = 0.5 if worst < 0.3 else 0.95  # weak systems' curves live above 50%
    shown = [t for t in _TICKS if t <= hi]
    ticks = norm.ppf(shown)
    ax.set_xticks(ticks, [_label(t) for t in shown])
    ax.set_yticks(ticks, [_label(t) for t in shown])
    limit = (norm.ppf(lo / 2), norm.ppf(hi))
    ax.set_xlim(*limit)
    ax.set_ylim(*limit)
    ax.plot(limit, limit, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with written_aside(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_tsne(
    emb: np.ndarray,
    spk: np.ndarray,
    path: str | Path,
    max_speakers: int = 20,
    max_points: int = 1000,
    seed: int = 0,
    title: str = "t-SNE of embeddings",
) -> Path:
    """2-D t-SNE (scikit-learn) of ``emb`` coloured by speaker; at most ``max_speakers``
    speakers (and ``max_points`` embeddings) are drawn so that the colours stay distinguishable
    and the run stays short."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    emb = np.asarray(emb, dtype=np.float64)
    spk = np.asarray(spk).astype(str)
    keep_spk = np.unique(spk)[:max_speakers]
    mask = np.isin(spk, keep_spk)
    emb, spk = emb[mask], spk[mask]
    if emb.shape[0] > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(emb.shape[0], max_points, False))
        emb, spk = emb[pick], spk[pick]
    if emb.shape[0] < 4:
        raise ValueError(f"t-SNE needs at least 4 embeddings, got {emb.shape[0]}")
    perplexity = float(min(30.0, (emb.shape[0] - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    # OpenMP start-up dominates small problems (seconds on a busy machine): one thread there.
    with threadpool_limits(1 if emb.shape[0] < 500 else None):
        xy = tsne.fit_transform(unit)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(keep_spk):
        sel = spk == s
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=cmap(i % 20), label=s)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(keep_spk) <= 20:
        ax.legend(fontsize=6, markerscale=0.8, loc="best", ncol=2)
    fig.tight_layout()
    with written_aside(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
