"""Parity of an exported encoder with the PyTorch one it came from, checked on every export.

Two measurements, both on real audio of the checkpoint's own dev set (``data`` config):

* **lengths**: the dev utterances joined end to end and cut to ``LENGTHS_S`` seconds (1, 3 and
  7.3 s by default), featurised by ``frontend.pipeline.extract_features`` and embedded by both
  models one at a time: max |difference| per length. Different lengths through one file is
  also the check that its time axis is really dynamic.
* **dev EER**: the sweep's dev evaluation (``scoring.verification``: the dev utterances and the
  PLDA-fit sample, centred crops of at most ``trainer.val_max_seconds``, ``scoring.embed``,
  cosine and PLDA fitted on the sample) run once with each model on the same cached features.
  The exported model enters ``scoring.embed`` as an ``nn.Module`` backed by its runtime, so
  there is no second embedding path.

Limits: max |difference| <= ``EMB_TOL`` x max(1, max |embedding|) and |EER difference| <=
``EER_TOL`` (0.01% absolute) for every backend that scores with both models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

EMB_TOL = 1e-4  # relative to max(1, the largest |embedding| component)
EER_TOL = 1e-4  # 0.01 % absolute
LENGTHS_S = (1.0, 3.0, 7.3)


class ParityError(ValueError):
    """The exported model does not reproduce the PyTorch one within the limits."""


@dataclass
class DevSet:
    """Cached features of the dev utterances and the backend-fit sample, and the trials."""

    val: Any  # scoring.embed.Features
    fit: Any
    trials: pd.DataFrame
    val_spk: dict[str, str]
    fit_spk: dict[str, str]
    uris: list[str]  # dev audio, in utterance order, for the length checks
    max_seconds: float | None
    storage_options: dict[str, Any] | None = None


def load_dev_set(cfg: dict[str, Any]) -> DevSet:
    """The checkpoint's dev role (``data.corpus.load_corpus``) and PLDA sample, featurised once."""
    from speakertune.data.corpus import load_corpus
    from speakertune.data.plda_sample import plda_sample
    from speakertune.scoring.embed import load_features as load_eval_features

    t = cfg["trainer"]
    corpus = load_corpus(cfg["data"])
    sample = plda_sample(corpus.train, int(t["plda_utts"]), int(t["plda_utts_per_speaker"]),
                         int(t["seed"]))
    so = corpus.storage_options or None
    max_s = t.get("val_max_seconds")
    val = load_eval_features(corpus.val, cfg, storage_options=so, max_seconds=max_s)
    fit = load_eval_features(sample, cfg, storage_options=so, max_seconds=max_s)
    if not val.feats:
        raise ParityError("the dev set has no decodable utterance to check parity on")
    val_df = corpus.val.sort_values("utt")
    return DevSet(val, fit, corpus.trials,
                  dict(zip(corpus.val["utt"].astype(str), corpus.val["spk"].astype(str))),
                  dict(zip(sample["utt"].astype(str), sample["spk"].astype(str))),
                  [str(u) for u, k in zip(val_df["uri"], val_df["utt"]) if str(k) in val.feats],
                  max_s, so)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@torch.no_grad()
def check_lengths(reference: torch.nn.Module, exported: torch.nn.Module, cfg: dict[str, Any],
                  dev: DevSet, lengths_s: tuple[float, ...] = LENGTHS_S
                  ) -> list[dict[str, Any]]:
    """Max |difference| of the two models' embeddings on dev audio cut to each length.

    Example: ``check_lengths(enc, OnnxEncoder(p), cfg, dev)[0]`` -> ``{"seconds": 1.0,
    "frames": 98, "max_abs_diff": 2.4e-06, "max_abs_embedding": 5.7}``.
    """
    from speakertune.data.audio import decode_cap, load_audio
    from speakertune.frontend.pipeline import extract_features

    sr = int(cfg["data"]["sample_rate"])
    need, parts, have = int(max(lengths_s) * sr), [], 0
    for uri in dev.uris:
        if have >= need:
            break
        parts.append(load_audio(uri, sr, dev.storage_options, max_seconds=decode_cap(cfg)))
        have += len(parts[-1])
    if have < need:
        raise ParityError(f"the dev audio lasts {have / sr:.1f} s, less than the "
                          f"{max(lengths_s):g} s the length check needs")
    wave = np.concatenate(parts)
    rows = []
    for seconds in lengths_s:
        feats = extract_features(wave[: int(round(seconds * sr))], cfg)[None].float()
        ref, exp = reference.eval()(feats).numpy(), exported(feats).numpy()
        rows.append({"seconds": seconds, "frames": int(feats.shape[1]),
                     "max_abs_diff": _max_diff(ref, exp),
                     "max_abs_embedding": float(np.max(np.abs(ref)))})
    return rows


def _dev_metrics(encoder: torch.nn.Module, dev: DevSet, cfg: dict[str, Any]
                 ) -> tuple[dict[str, np.ndarray], Any]:
    from speakertune.scoring.embed import embed_features
    from speakertune.scoring.verification import score_backends

    val = embed_features(encoder, dev.val.feats)
    fit = embed_features(encoder, dev.fit.feats)
    res = score_backends(fit, dev.fit_spk, val, dev.trials, cfg["backend"],
                         cfg["trainer"]["val_backend"], dev.val_spk)
    return {**{f"val/{k}": v for k, v in val.items()},
            **{f"fit/{k}": v for k, v in fit.items()}}, res


def check_dev(reference: torch.nn.Module, exported: torch.nn.Module, dev: DevSet,
              cfg: dict[str, Any]) -> dict[str, Any]:
    """Dev EER (and 95% CI) per backend with each model, and max |embedding difference|."""
    emb_ref, res_ref = _dev_metrics(reference, dev, cfg)
    emb_exp, res_exp = _dev_metrics(exported, dev, cfg)
    backends = {}
    for name in ("cosine", "plda"):
        a, b = res_ref.metrics[f"val_eer_{name}"], res_exp.metrics[f"val_eer_{name}"]
        backends[name] = {"pytorch": a, "exported": b,
                          "abs_diff": abs(a - b) if not (math.isnan(a) or math.isnan(b))
                          else (0.0 if math.isnan(a) and math.isnan(b) else math.inf),
                          "error": res_ref.errors.get(name) or res_exp.errors.get(name)}
    ci = {tag: [r.metrics["val_eer_low"], r.metrics["val_eer_high"]]
          for tag, r in (("pytorch", res_ref), ("exported", res_exp))}
    return {
        "utterances": len(dev.val.feats), "fit_utterances": len(dev.fit.feats),
        "skipped_utterances": len(dev.val.skipped) + len(dev.fit.skipped),
        "trials": int(len(dev.trials) - res_ref.dropped_trials),
        "max_seconds": dev.max_seconds,
        "max_abs_diff": max(_max_diff(emb_ref[k], emb_exp[k]) for k in emb_ref),
        "max_abs_embedding": max(float(np.max(np.abs(v))) for v in emb_ref.values()),
        "val_backend": cfg["trainer"]["val_backend"], "val_eer_ci95": ci, "backends": backends,
    }


def failures(lengths: list[dict[str, Any]], dev: dict[str, Any], emb_tol: float = EMB_TOL,
             eer_tol: float = EER_TOL) -> list[str]:
    """One line per limit exceeded (empty: parity holds)."""
    out = []
    for row in [*lengths, {**dev, "seconds": None}]:
        limit = emb_tol * max(1.0, row["max_abs_embedding"])
        if not row["max_abs_diff"] <= limit:
            where = f"{row['seconds']:g} s utterance" if row["seconds"] else "dev embeddings"
            out.append(f"{where}: max |embedding difference| {row['max_abs_diff']:.3g} > "
                       f"{limit:.3g}")
    for name, b in dev["backends"].items():
        if not b["abs_diff"] <= eer_tol:
            out.append(f"dev EER ({name}): pytorch {100 * b['pytorch']:.4f}% vs exported "
                       f"{100 * b['exported']:.4f}% differ by more than {100 * eer_tol:g}%")
    return out
