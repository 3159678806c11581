"""The end-of-sweep report: ranked trials (Markdown + CSV), parameter importances, DET of the
top trials and the exported best checkpoint.

Input is plain data (``TrialRecord``: sampled params, per-epoch reports, resources), so the
report can be rebuilt from any finished or restored experiment without Ray running.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.checkpoint import load_val_scores, ranked_backend_of
from speakertune.data import storage
from speakertune.data.storage import write_text
from speakertune.metric_keys import DEV_EERS, DEV_MIN_DCFS, RANKED_EER
from speakertune.search.objectives import OBJECTIVES, metric_keys, pareto_mask

# the dev EER of search.backend (what the sweep ranks on), its 95% bootstrap CI (enrollment
# speakers resampled), then each backend's dev EER and minDCF
METRIC_COLUMNS = (RANKED_EER, "val_eer_low", "val_eer_high", *DEV_EERS, *DEV_MIN_DCFS)
COLUMNS = (
    "rank", "trial", "params", *METRIC_COLUMNS, "num_params", "macs", "latency_ms", "epochs",
    "best_epoch", "stopped_early", "status", "cpu_h", "gpu_h", "checkpoint",
)  # fmt: skip


@dataclass
class TrialRecord:
    """One trial as the report needs it."""

    trial_id: str
    params: dict[str, Any]
    history: pd.DataFrame  # one row per reported epoch (trainer report keys + checkpoint_path)
    status: str = "TERMINATED"  # Ray Tune's final trial status
    resources: dict[str, float] = field(default_factory=dict)  # {"CPU": .., "GPU": ..}
    time_s: float = 0.0  # wall time the trial held its resources
    error: str | None = None


def _best_row(h: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    if metric not in h or h[metric].notna().sum() == 0:
        return None
    col = h[metric].astype(float)
    tied = h[col == (col.min() if mode == "min" else col.max())]
    # On a tie Ray Train's retention (checkpoint_score_attribute, num_to_keep) deletes the
    # earlier checkpoint first, so the latest tied epoch is the one whose checkpoint exists.
    return tied.iloc[-1]


def _fmt_params(params: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={short(v)}" for k, v in sorted(params.items()))


def rank_trials(
    records: list[TrialRecord],
    *,
    metric: str = "val_eer",
    mode: str = "min",
    max_t: int | None = None,
    objectives: list[str] | None = None,
) -> pd.DataFrame:
    """One row per trial, best first by each trial's best epoch; unreported trials last.

    With ``objectives`` (``search.objectives``) a ``pareto`` column marks the trials whose
    best-epoch values no other trial beats in every objective."""
    rows = []
    for r in records:
        best = _best_row(r.history, metric, mode)
        epochs = int(r.history["epoch"].max()) if "epoch" in r.history and len(r.history) else 0
        row: dict[str, Any] = {
            "trial": r.trial_id,
            "params": _fmt_params(r.params),
            "num_params": None,
            "macs": None,
            "latency_ms": math.nan,
            "epochs": epochs,
            "best_epoch": None,
            "status": r.status if not r.error else f"{r.status}: {r.error.splitlines()[0][:80]}",
            # stopped by the scheduler (ASHA) rather than run to the epoch budget or failed
            "stopped_early": bool(
                max_t and epochs < max_t and r.status == "TERMINATED" and not r.error
            ),
            "cpu_h": r.resources.get("CPU", 0.0) * r.time_s / 3600.0,
            "gpu_h": r.resources.get("GPU", 0.0) * r.time_s / 3600.0,
            "checkpoint": None,
        }
        for c in METRIC_COLUMNS:
            row[c] = float(best[c]) if best is not None and c in best else math.nan
        if best is not None:
            for c in ("num_params", "macs"):
                row[c] = int(best[c]) if c in best and not pd.isna(best[c]) else None
            row["latency_ms"] = float(best["latency_ms"]) if "latency_ms" in best else math.nan
            row["best_epoch"] = int(best["epoch"]) if "epoch" in best else None
            ckpt = best.get("checkpoint_path")
            row["checkpoint"] = ckpt if isinstance(ckpt, str) and ckpt else None
        rows.append(row)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    key = df[metric] if mode == "min" else -df[metric]
    df = df.assign(_k=key).sort_values("_k", na_position="last", kind="stable").drop(columns="_k")
    df.insert(0, "rank", range(1, len(df) + 1))
    df.loc[df[metric].isna(), "rank"] = None
    df = df.reset_index(drop=True)
    if objectives:
        values = df[metric_keys(objectives)].astype(float).to_numpy()
        df["pareto"] = pareto_mask(values) & df["rank"].notna().to_numpy()
    return df


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def eer_with_ci(eer: Any, low: Any, high: Any) -> str:
    """``2.10% [1.7, 2.5]`` (a rate and its 95% CI, in percent); ``2.10%`` without a CI."""
    if not _finite(eer):
        return "-"
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if _finite(low) and _finite(high) else ""
    return f"{100 * eer:.2f}%{ci}"


def _cell(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col.startswith("val_eer"):
        return f"{100 * v:.2f}%"
    if col.startswith("val_min_dcf"):
        return f"{v:.3f}"
    if col in ("cpu_h", "gpu_h"):
        return f"{v:.3f}"
    if col == "num_params":
        return f"{int(v):,}"
    if col == "macs":
        return f"{v / 1e9:.2f}"
    if col == "latency_ms":
        return f"{v:.1f}"
    if col == "pareto":
        return "yes" if v else ""
    if col in ("rank", "epochs", "best_epoch"):
        return str(int(v))
    if col == "stopped_early":
        return "yes" if v else ""
    return str(v).replace("|", "\\|")


MD_COLUMNS = [c for c in COLUMNS if c not in ("checkpoint", "val_eer_low", "val_eer_high")]


def to_markdown(df: pd.DataFrame) -> str:
    tests = [c[len("test_"):-len("_eer")] for c in df.columns
             if c.startswith("test_") and c.endswith("_eer")]  # reported after the sweep
    pareto = ["pareto"] if "pareto" in df.columns else []  # multi-objective sweeps only
    head = ["rank", "trial", "params", "dev EER [95% CI]", "EER cos", "EER PLDA", "minDCF cos",
            "minDCF PLDA", "params #", "GMACs 2 s", "latency ms", "epochs", "best ep",
            "ASHA stop", "status", "CPU-h", "GPU-h",
            *(f"test {t} EER [CI]" for t in tests), *pareto]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in df.iterrows():
        cells = [eer_with_ci(row["val_eer"], row["val_eer_low"], row["val_eer_high"])
                 if c == "val_eer" else _cell(row[c], c) for c in MD_COLUMNS]
        cells += [eer_with_ci(row[f"test_{t}_eer"], row[f"test_{t}_low"], row[f"test_{t}_high"])
                  for t in tests]
        cells += [_cell(row[c], c) for c in pareto]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(df: pd.DataFrame, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "leaderboard.md", out / "leaderboard.csv"
    write_text(md, (f"# {title}\n\n" if title else "") + to_markdown(df))
    with storage.written_aside(csv) as tmp:
        df.to_csv(tmp, index=False)
    return {"markdown": md, "csv": csv}


def _distribution(param: Any) -> Any:
    import optuna.distributions as d

    if param.kind == "choice":
        return d.CategoricalDistribution(param.args)
    if param.kind == "int":
        return d.IntDistribution(param.args[0], param.args[1], step=param.step or 1)
    return d.FloatDistribution(
        float(param.args[0]), float(param.args[1]), log=param.kind == "loguniform", step=param.step
    )


def param_importances(
    records: list[TrialRecord], space: Any, *, metric: str = "val_eer", mode: str = "min"
) -> tuple[dict[str, float], str]:
    """Optuna (fANOVA) importances over the trials' best metric; ``({}, reason)`` if impossible.

    Built from the results rather than the live searcher so that it also works after a resume.
    """
    import optuna

    dists = {p: _distribution(q) for p, q in space.params.items()}
    trials = []
    for r in records:
        best = _best_row(r.history, metric, mode)
        if best is None:
            continue
        params = {k: v for k, v in r.params.items() if k in dists}
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=float(best[metric]),
            )
        )
    if len(trials) < 2:
        return {}, f"needs at least 2 trials with a {metric}, got {len(trials)}"
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    study.add_trials(trials)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter present in every trial
        return {}, f"optuna could not compute importances: {str(exc).splitlines()[0]}"
    if not imp:
        return {}, "no parameter was sampled in every trial"
    return dict(imp), ""


def write_importances(imp: dict[str, float], reason: str, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    lines = ["# Parameter importances", ""]
    if not imp:
        lines.append(f"Not computed: {reason}.")
    else:
        lines += [
            "fANOVA importance of each parameter for the trials' best validation metric "
            "(parameters sampled in every trial; conditional ones are left out).",
            "",
            "| parameter | importance |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
        _bar_chart(imp, out / "importances.png")
    path = out / "importances.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _bar_chart(imp: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    with storage.written_aside(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


AXIS_LABELS = {"num_params": "encoder parameters", "macs": "MACs (2 s of audio)",
               "latency_ms": "latency (ms, 3 s, 1 thread)"}


def plot_pareto(df: pd.DataFrame, objectives: list[str], path: str | Path) -> Path | None:
    """``pareto.png``: dev EER (95% CI bars) against the first objective that is not
    ``dev_eer``, one dot per ranked trial, the Pareto-optimal ones (``pareto`` column, over all
    objectives) highlighted and joined. None when fewer than one trial has both values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = OBJECTIVES[next(o for o in objectives if o != "dev_eer")]
    d = df[df["rank"].notna()].dropna(subset=[x_key, "val_eer"])
    if d.empty:
        return None
    x, y = d[x_key].astype(float), 100 * d["val_eer"].astype(float)
    err = [(y - 100 * d["val_eer_low"]).clip(lower=0).fillna(0),
           (100 * d["val_eer_high"] - y).clip(lower=0).fillna(0)]
    front = d["pareto"].astype(bool).to_numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.errorbar(x, y, yerr=err, fmt="o", color="0.6", ecolor="0.8", label="trial")
    order = np.argsort(x[front].to_numpy())
    ax.plot(x[front].to_numpy()[order], y[front].to_numpy()[order], "o-", color="tab:red",
            drawstyle="steps-post" if len(objectives) == 2 else "default",
            label="Pareto front", zorder=3)
    for xi, yi, t in zip(x[front], y[front], d["trial"][front]):
        ax.annotate(str(t), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if x.min() > 0 and x.max() / x.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS.get(x_key, x_key))
    ax.set_ylabel("dev EER (%)")
    ax.set_title(f"Pareto front over {', '.join(objectives)}")
    ax.legend()
    fig.tight_layout()
    with storage.written_aside(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def det_top(
    df: pd.DataFrame, out_path: str | Path, *, top: int = 3, log: Any = print
) -> Path | None:
    """DET curves of the top trials from the validation scores saved with their checkpoints.

    These are the very scores the trainer's reported EERs come from, so curve and leaderboard
    agree by construction (re-scoring would embed utterances differently, e.g. other crops).
    """
    from speakertune.scoring.plots import plot_det

    systems: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _, row in df[df["checkpoint"].notna()].head(top).iterrows():
        backend = ranked_backend_of(str(row["checkpoint"]))  # the one the table ranks on
        try:
            scores, labels = load_val_scores(str(row["checkpoint"]), backend)
        except Exception as exc:  # one unreadable checkpoint must not cost the whole report
            log(f"DET: skipped trial {row['trial']}: {str(exc).splitlines()[0]}")
            continue
        # plot_det adds each curve's EER to its legend entry
        systems[f"#{int(row['rank'])} {row['trial']} ({backend})"] = (scores, labels)
    if not systems:
        return None
    return Path(plot_det(systems, out_path, title="Top trials (validation)"))


def export_best(row: pd.Series, dest: str | Path) -> Path | None:
    """Copy the best trial's checkpoint (weights, PLDA/cosine backends, config) to ``dest``,
    with its ``calibration.json`` fitted on the checkpoint's dev trial scores."""
    src = row.get("checkpoint")
    if not isinstance(src, str) or not src:
        return None
    from speakertune.redact import redact_config
    from speakertune.scoring.calibration import export_calibration

    info = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}  # JSON types
    info = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in info.items()}
    info = redact_config(info)  # params and paths may carry credentials (e.g. s3://key@...)

    def complete(staged: Path) -> None:  # before the swap: best/ is never without them
        write_text(staged / "trial.json", json.dumps(info, indent=2, default=str))
        export_calibration(staged)  # calibration.json: dev-trained LLRs and thresholds

    dest = storage.copy_tree(src, dest, complete=complete)
    return dest
