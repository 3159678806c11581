"""A human-readable corpus summary: ``summary.md`` (a table) and ``durations.png``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from speakertune.data.storage import write_text, written_aside


def corpus_stats(df: pd.DataFrame, trials: pd.DataFrame | None = None) -> dict[str, float]:
    per_spk = df.groupby("spk").size()
    stats = {
        "utterances": len(df),
        "speakers": int(per_spk.size),
        "hours": float(df["duration_s"].sum() / 3600),
        "duration_min_s": float(df["duration_s"].min()),
        "duration_median_s": float(df["duration_s"].median()),
        "duration_max_s": float(df["duration_s"].max()),
        "utts_per_speaker_min": int(per_spk.min()),
        "utts_per_speaker_max": int(per_spk.max()),
    }
    if trials is not None:
        stats["trials_target"] = int((trials["label"] == 1).sum())
        stats["trials_nontarget"] = int((trials["label"] == 0).sum())
    return stats


def write_summary(
    df: pd.DataFrame, trials: pd.DataFrame | None, out_dir: str | Path, title: str = "Corpus"
) -> Path:
    """Write ``out_dir/summary.md`` and ``out_dir/durations.png``; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    stats = corpus_stats(df, trials)
    lines = [f"# {title}", "", "| statistic | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in stats.items()]  # fmt: skip
    lines += ["", "![utterance durations](durations.png)", ""]
    write_text(out_dir / "summary.md", "\n".join(lines))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.hist(df["duration_s"], bins=40, color="tab:blue")
    ax1.set(xlabel="utterance duration (s)", ylabel="utterances", title="Durations")
    per_spk = df.groupby("spk")["duration_s"].sum() / 60
    ax2.hist(per_spk, bins=min(40, max(5, len(per_spk) // 3)), color="tab:green")
    ax2.set(xlabel="audio per speaker (min)", ylabel="speakers", title="Per speaker")
    fig.suptitle(f"{title}: {stats['speakers']} speakers, {stats['hours']:.2f} h")
    fig.tight_layout()
    with written_aside(out_dir / "durations.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_dir / "summary.md"


__all__ = ["corpus_stats", "write_summary"]
