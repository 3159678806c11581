"""Evaluation library behind ``jobs/evaluate.py``: embed, score, measure, plot.

Embeddings come from ``scoring.embed`` (the same path as per-epoch validation). Scoring uses
the backend the checkpoint was ranked on unless told otherwise. Backends come fitted from the
checkpoint when it holds them; otherwise (and for the AS-norm cohort) they use a development
set: ``fit_manifest`` if given, else the manifest's speakers that appear in no trial. Trial
speakers are always left out of the development set, so none leaks into a backend or the cohort.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.data.manifest import read_manifest
from speakertune.data.storage import write_text
from speakertune.data.trials import read_trials
from speakertune.metric_keys import VAL_BACKENDS
from speakertune.scoring.backends import ASNorm, Backend, enroll_ids, score_trials
from speakertune.scoring.backends.base import length_norm
from speakertune.scoring.metrics import identification_accuracy, verification_report
from speakertune.scoring.verification import fit_backends, usable_trials

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
    backend: str = ""  # the primary backend: the one asked for, or the checkpoint's ranked one
    backend_note: str = ""  # the printed line saying which backend and why


def verify(
    backends: dict[str, Backend],
    emb_by_utt: dict[str, np.ndarray],
    trials: pd.DataFrame,
    cohort: np.ndarray | None = None,
    top_n: int | None = None,
    cohort_spk: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Scores and EER/minDCF per system; with a cohort (raw embeddings [n, D], and with
    ``cohort_spk`` [n] one entry per speaker), also ``<name>+asnorm`` systems.

    Example: ``verify({"cosine": cos}, emb, trials, dev_x, 300, dev_spk)[1]`` ->
    ``{"cosine": {"eer": ...}, "cosine+asnorm": {"eer": ...}}``.
    """
    scores: dict[str, np.ndarray] = {}
    for name, backend in backends.items():
        scores[name] = score_trials(backend, emb_by_utt, trials)
        if cohort is not None and top_n:
            # Cohort entries are built in this backend's scoring space (see ASNorm).
            norm = ASNorm(backend, cohort, top_n, cohort_spk)
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
    write_text(path, "".join(lines))


def results_table(metrics: dict[str, dict[str, float]]) -> str:
    rows = ["| system | EER (%) | minDCF(0.01) | minDCF(0.001) |", "|---|---|---|---|"]
    for name, m in metrics.items():
        rows.append(f"| {name} | {100 * m['eer']:.2f} | {m['min_dcf_0.01']:.4f} | "
                    f"{m['min_dcf_0.001']:.4f} |")
    return "\n".join(rows)


def _choose_backends(ckpt: Any, backend: str | None) -> tuple[list[str], str, str]:
    """(backends to score, the primary one, why it is primary)."""
    if backend not in (None, "both", *VAL_BACKENDS):
        raise EvaluationError(f"backend {backend!r} is not cosine, plda, both or None")
    ranked, why = ckpt.ranked_backend()
    if backend is None:
        return [ranked], ranked, why
    if backend == "both":
        return list(VAL_BACKENDS), ranked, why
    return [backend], backend, "as asked"


def _announce(primary: str, why: str, names: list[str], cfg: dict[str, Any],
              max_seconds: float | None) -> str:
    """The printed line saying how this evaluation scores and embeds."""
    from speakertune.scoring.embed import describe

    others = [n for n in names if n != primary]
    also = f"; also {', '.join(others)}" if others else ""
    line = f"scoring backend: {primary} ({why}){also}; embeddings: {describe(max_seconds)}"
    swept = (cfg.get("trainer") or {}).get("val_max_seconds")
    if swept and swept != max_seconds:
        line += (f"\nnote: the sweep validated this checkpoint on centred crops of at most "
                 f"{swept:g} s; max_seconds={swept:g} reproduces its dev EER")
    print(line, file=sys.stderr, flush=True)
    return line.splitlines()[0]


def _check_dev(dev_df: pd.DataFrame, trial_spk: set[str], to_fit: list[str]) -> None:
    if dev_df.loc[~dev_df["spk"].astype(str).isin(trial_spk), "spk"].nunique() >= 2:
        return
    what = f"backends {to_fit} are not in the checkpoint" if to_fit else "AS-norm needs a cohort"
    raise EvaluationError(f"{what} and there is no development set (>= 2 speakers that are "
                          "in no trial): pass fit_manifest / --fit-manifest")


def _dev_embeddings(ckpt: Any, dev_df: pd.DataFrame, trial_spk: set[str], kw: dict[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Development embeddings [n, D] and speakers [n], sorted by utterance (the order
    validation fits in); rows of trial speakers are left out so none joins the cohort."""
    from speakertune.scoring.embed import embed_utterances

    own = dev_df["spk"].astype(str).isin(trial_spk)
    if own.any():
        log.info("evaluate: %d development utterances of trial speakers left out", own.sum())
    dev_df = dev_df[~own]
    dev_emb = embed_utterances(ckpt.encoder, dev_df, ckpt.cfg, **kw)
    dev_spk = dict(zip(dev_df["utt"].astype(str), dev_df["spk"].astype(str)))
    utts = sorted(dev_emb)
    x = np.stack([dev_emb[u] for u in utts])
    return x, np.array([dev_spk[u] for u in utts]), dev_emb.skipped


def _read_inputs(manifest: Any, trials: Any, fit_manifest: Any, so: dict[str, Any] | None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The manifest, trials and optional fit manifest, each a path or a frame already."""
    man = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, so)
    tri = trials if isinstance(trials, pd.DataFrame) else read_trials(trials, storage_options=so)
    if fit_manifest is None or isinstance(fit_manifest, pd.DataFrame):
        return man, tri, fit_manifest
    return man, tri, read_manifest(fit_manifest, so)


def _kept_trials(tri: pd.DataFrame, emb: dict[str, np.ndarray]) -> tuple[pd.DataFrame, int]:
    """Trials whose two sides were embedded, and how many were dropped (counted, reported)."""
    kept = usable_trials(tri, set(emb)).reset_index(drop=True)
    dropped = len(tri) - len(kept)
    if kept["label"].nunique() < 2:
        raise EvaluationError("after skipping undecodable utterances no target/non-target mix "
                              f"remains ({dropped} of {len(tri)} trials dropped)")
    return kept, dropped


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    trials: str | Path | pd.DataFrame,
    *,
    backend: str | None = None,
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
    """Score ``trials`` with a checkpoint. ``backend=None`` scores with the backend the
    checkpoint was ranked on during the sweep; ``"cosine"``/``"plda"``/``"both"`` choose.
    ``asnorm_cohort=N`` adds ``<name>+asnorm`` systems
    with the top-N cohort. Embeddings are ``scoring.embed``'s: full utterances unless
    ``max_seconds``. ``result.backend`` (and a printed line) say which backend was used.

    Example: ``evaluate("ckpt", "m.parquet", "trials.txt").metrics`` ->
    ``{"plda": {"eer": 0.0407, "min_dcf_0.01": ..., "min_dcf_0.001": ...}}``.
    """
    from speakertune.checkpoint import load_checkpoint
    from speakertune.scoring.embed import embed_utterances

    ckpt = load_checkpoint(checkpoint, map_location=device)
    cfg = ckpt.cfg
    so = storage_options if storage_options is not None else cfg.get("data", {}).get("storage")
    so = so or None
    man, tri, fit_df = _read_inputs(manifest, trials, fit_manifest, so)
    names, primary, why = _choose_backends(ckpt, backend)
    eval_df, dev_df = _split_dev(man, tri)
    dev_df = dev_df if fit_df is None else fit_df
    to_fit = [b for b in names if b not in ckpt.backends]
    need_dev = bool(to_fit) or bool(asnorm_cohort)
    trial_spk = set(eval_df["spk"].astype(str))
    if need_dev:
        _check_dev(dev_df, trial_spk, to_fit)
    line = _announce(primary, why, names, cfg, max_seconds)
    kw = dict(batch_size=batch_size, device=device, max_seconds=max_seconds,
              storage_options=so, progress=progress)
    emb = embed_utterances(ckpt.encoder, eval_df, cfg, **kw)
    skipped = dict(emb.skipped)
    fitted = {b: ckpt.backends[b] for b in names if b in ckpt.backends}
    cohort = cohort_spk = None
    if need_dev:
        x, cohort_spk, dev_skipped = _dev_embeddings(ckpt, dev_df, trial_spk, kw)
        skipped.update(dev_skipped)
        fitted.update(fit_backends(to_fit, x, cohort_spk, cfg))
        cohort = x if asnorm_cohort else None
    fitted = {b: fitted[b] for b in names}  # keep the requested order
    kept, dropped = _kept_trials(tri, emb)
    scores, metrics = verify(fitted, emb, kept, cohort, asnorm_cohort, cohort_spk)
    spk_by_utt = dict(zip(eval_df["utt"].astype(str), eval_df["spk"].astype(str)))
    result = EvalResult(metrics=metrics, scores=scores, trials=kept,
                        identification=identify(emb, spk_by_utt), skipped_utts=skipped,
                        skipped_trials=dropped, backend=primary, backend_note=line)
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
        "backend": result.backend,
        "backend_note": result.backend_note,
        "metrics": result.metrics,
        "identification": {f"top{k}": v for k, v in result.identification.items()},
        "trials_scored": len(result.trials),
        "trials_skipped": result.skipped_trials,
        "utterances_skipped": result.skipped_utts,
    }
    write_text(out / "metrics.json", json.dumps(summary, indent=2))
    write_text(out / "results.md", results_table(result.metrics) + "\n")
    result.files["metrics"] = out / "metrics.json"
