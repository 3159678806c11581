"""Evaluation library behind ``jobs/evaluate.py``: embed, score, measure, plot.

Backends come fitted from the checkpoint when it holds them; otherwise (and for the AS-norm
cohort) they use a development set: ``fit_manifest`` if given, else the manifest's speakers
that appear in no trial, so that no trial speaker leaks into the backend or the cohort.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.registry import BACKENDS
from speakertune.scoring.backends import ASNorm, Backend, enroll_ids, score_trials
from speakertune.scoring.backends.base import length_norm
from speakertune.scoring.metrics import identification_accuracy, verification_report

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Evaluation cannot run as asked; the message says what is missing."""


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # system -> {"eer", "min_dcf_0.01", ...}
    scores: dict[str, np.ndarray]  # system -> one score per kept trial
    trials: pd.DataFrame  # the trials that were scored
    identification: dict[int, float] = field(default_factory=dict)
    skipped_utts: dict[str, str] = field(default_factory=dict)
    skipped_trials: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def fit_backends(
    names: Sequence[str], emb: np.ndarray, spk: np.ndarray, cfg: dict[str, Any] | None = None
) -> dict[str, Backend]:
    """Build each named backend with its options from ``cfg["backend"][name]`` and fit it."""
    opts = (cfg or {}).get("backend", {}) or {}
    return {n: BACKENDS.build({"name": n, **(opts.get(n) or {})}).fit(emb, spk) for n in names}


def speaker_means(emb_by_utt: dict[str, np.ndarray], spk_by_utt: dict[str, str]) -> np.ndarray:
    """One cohort entry per speaker: the mean of its length-normalised embeddings."""
    groups: dict[str, list[np.ndarray]] = {}
    for utt, e in emb_by_utt.items():
        groups.setdefault(spk_by_utt[utt], []).append(e)
    return np.stack([length_norm(np.stack(v)).mean(axis=0) for v in groups.values()])


def verify(
    backends: dict[str, Backend],
    emb_by_utt: dict[str, np.ndarray],
    trials: pd.DataFrame,
    cohort: np.ndarray | None = None,
    top_n: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Scores and EER/minDCF per system; with a cohort, also ``<name>+asnorm`` systems."""
    scores: dict[str, np.ndarray] = {}
    for name, backend in backends.items():
        scores[name] = score_trials(backend, emb_by_utt, trials)
        if cohort is not None and top_n:
            norm = ASNorm(backend, cohort, top_n)
            scores[f"{name}+asnorm"] = score_trials(backend, emb_by_utt, trials, asnorm=norm)
    labels = trials["label"].to_numpy()
    return scores, {k: verification_report(v, labels) for k, v in scores.items()}


def identify(
    emb_by_utt: dict[str, np.ndarray], spk_by_utt: dict[str, str], ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Closed-set identification by cosine to speaker centroids: per speaker with >= 2
    utterances, the first half (sorted by id) enrolls and the rest are tests."""
    by_spk: dict[str, list[str]] = {}
    for utt in sorted(emb_by_utt):
        by_spk.setdefault(spk_by_utt[utt], []).append(utt)
    by_spk = {s: u for s, u in by_spk.items() if len(u) >= 2}
    if len(by_spk) < 2:
        return {}
    # Centred first: raw embeddings share a large common direction that swamps cosine.
    mean = np.mean([emb_by_utt[u] for utts in by_spk.values() for u in utts], axis=0)
    centroids, tests, labels = [], [], []
    for c, utts in enumerate(by_spk.values()):
        half = (len(utts) + 1) // 2
        x = length_norm(np.stack([emb_by_utt[u] for u in utts]) - mean)
        centroids.append(x[:half].mean(0))
        tests += list(x[half:])
        labels += [c] * (len(utts) - half)
    sims = length_norm(np.stack(tests)) @ length_norm(np.stack(centroids)).T
    return identification_accuracy(sims, np.array(labels), ks)


def _split_dev(manifest: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(utterances used by trials, development utterances of speakers in no trial)."""
    used = set(trials["test"].astype(str))
    for e in pd.unique(trials["enroll"].astype(str)):
        used.update(enroll_ids(e))
    utt = manifest["utt"].astype(str)
    unknown = sorted(used - set(utt))
    if unknown:
        src = trials.attrs.get("source", "trials")
        raise EvaluationError(f"{src}: {len(unknown)} utterances not in the manifest "
                              f"(first: {unknown[0]!r})")
    eval_df = manifest[utt.isin(used)]
    trial_spk = set(eval_df["spk"].astype(str))
    dev_df = manifest[~manifest["spk"].astype(str).isin(trial_spk)]
    return eval_df, dev_df


def write_scores(path: Path, trials: pd.DataFrame, scores: np.ndarray) -> None:
    lines = (f"{e} {t} {int(y)} {s:.7f}\n"
             for e, t, y, s in zip(trials["enroll"], trials["test"], trials["label"], scores))
    path.write_text("".join(lines))


def results_table(metrics: dict[str, dict[str, float]]) -> str:
    rows = ["| system | EER (%) | minDCF(0.01) | minDCF(0.001) |", "|---|---|---|---|"]
    for name, m in metrics.items():
        rows.append(f"| {name} | {100 * m['eer']:.2f} | {m['min_dcf_0.01']:.4f} | "
                    f"{m['min_dcf_0.001']:.4f} |")
    return "\n".join(rows)


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    trials: str | Path | pd.DataFrame,
    *,
    backends: Sequence[str] = ("cosine", "plda"),
    asnorm_cohort: int | None = None,
    out_dir: str | Path | None = None,
    fit_manifest: str | Path | pd.DataFrame | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    max_seconds: float | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    tsne: bool = True,
) -> EvalResult:
    from speakertune.checkpoint import load_checkpoint
    from speakertune.data.manifest import read_manifest
    from speakertune.data.trials import read_trials
    from speakertune.scoring.embed import embed_utterances

    ckpt = load_checkpoint(checkpoint, map_location=device)
    cfg = ckpt.cfg
    so = storage_options if storage_options is not None else cfg.get("data", {}).get("storage")
    so = so or None
    man = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, so)
    tri = trials if isinstance(trials, pd.DataFrame) else read_trials(trials, storage_options=so)
    eval_df, dev_df = _split_dev(man, tri)
    if fit_manifest is not None:
        dev_df = (fit_manifest if isinstance(fit_manifest, pd.DataFrame)
                  else read_manifest(fit_manifest, so))
    to_fit = [b for b in backends if b not in ckpt.backends]
    need_dev = bool(to_fit) or bool(asnorm_cohort)
    if need_dev and dev_df["spk"].nunique() < 2:
        why = f"backends {to_fit} are not in the checkpoint" if to_fit else "AS-norm needs a cohort"
        raise EvaluationError(f"{why} and there is no development set (>= 2 speakers that are "
                              "in no trial): pass fit_manifest / --fit-manifest")
    kw = dict(batch_size=batch_size, device=device, max_seconds=max_seconds,
              storage_options=so, progress=progress)
    emb = embed_utterances(ckpt.encoder, eval_df, cfg, **kw)
    skipped = dict(emb.skipped)
    fitted = {b: ckpt.backends[b] for b in backends if b in ckpt.backends}
    cohort = None
    if need_dev:
        dev_emb = embed_utterances(ckpt.encoder, dev_df, cfg, **kw)
        skipped.update(dev_emb.skipped)
        dev_spk = dict(zip(dev_df["utt"].astype(str), dev_df["spk"].astype(str)))
        utts = list(dev_emb)
        x = np.stack([dev_emb[u] for u in utts])
        fitted.update(fit_backends(to_fit, x, np.array([dev_spk[u] for u in utts]), cfg))
        if asnorm_cohort:
            cohort = speaker_means(dev_emb, dev_spk)
    fitted = {b: fitted[b] for b in backends}  # keep the requested order
    # Trials touching an utterance that could not be embedded are dropped and counted.
    ok = np.array([t in emb and all(u in emb for u in enroll_ids(e))
                   for e, t in zip(tri["enroll"].astype(str), tri["test"].astype(str))])
    kept = tri[ok].reset_index(drop=True)
    if kept["label"].nunique() < 2:
        raise EvaluationError("after skipping undecodable utterances no target/non-target mix "
                              f"remains ({int((~ok).sum())} of {len(tri)} trials dropped)")
    scores, metrics = verify(fitted, emb, kept, cohort, asnorm_cohort)
    spk_by_utt = dict(zip(eval_df["utt"].astype(str), eval_df["spk"].astype(str)))
    result = EvalResult(metrics=metrics, scores=scores, trials=kept,
                        identification=identify(emb, spk_by_utt), skipped_utts=skipped,
                        skipped_trials=int((~ok).sum()))
    if out_dir is not None:
        _write_outputs(Path(out_dir), result, emb, spk_by_utt, tsne)
    return result


def _write_outputs(out: Path, result: EvalResult, emb: dict[str, np.ndarray],
                   spk_by_utt: dict[str, str], tsne: bool) -> None:
    from speakertune.scoring.plots import plot_det, plot_tsne

    out.mkdir(parents=True, exist_ok=True)
    labels = result.trials["label"].to_numpy()
    for name, s in result.scores.items():
        path = out / f"scores_{name.replace('+', '_')}.txt"
        write_scores(path, result.trials, s)
        result.files[f"scores_{name}"] = path
    result.files["det"] = plot_det({k: (v, labels) for k, v in result.scores.items()},
                                   out / "det.png")
    if tsne:
        utts = sorted(emb)
        spk = np.array([spk_by_utt[u] for u in utts])
        if len(utts) >= 4:
            result.files["tsne"] = plot_tsne(np.stack([emb[u] for u in utts]), spk,
                                             out / "tsne.png")
    summary = {
        "metrics": result.metrics,
        "identification": {f"top{k}": v for k, v in result.identification.items()},
        "trials_scored": len(result.trials),
        "trials_skipped": result.skipped_trials,
        "utterances_skipped": result.skipped_utts,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(results_table(result.metrics) + "\n")
    result.files["metrics"] = out / "metrics.json"
