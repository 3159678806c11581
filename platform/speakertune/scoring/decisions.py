"""Calibrated decisions with an exported model (a sweep's ``best/``): verify, enroll, identify.

A model directory is a checkpoint plus ``calibration.json`` (``scoring.calibration``). Audio
goes through the one embedding path (``scoring.embed``), with the crop the calibration's dev
scores were made with, and is scored by the checkpoint's ranked backend, the one the
calibration was fitted on; ``score_trials`` combines multi-file enrollments as evaluation
does. The calibrated LLR is compared with one of the calibration's thresholds: ``bayes`` (the
Bayes decision at its ``p_target``) or ``far`` (the dev false-accept rate it was set at).

A gallery is a folder of ``<name>.npz`` files (raw embeddings [n, D] of the enrolled files and
the model's fingerprint: SHA-256 over ``model.pt`` and the front-end settings that shape an
embedding, so a gallery is never scored by another model or another front end). Entries are
written aside and renamed into place; an existing speaker is replaced only when asked; a
corrupt entry is skipped with a warning, not fatal to the rest of the gallery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.data.storage import written_aside
from speakertune.scoring.calibration import load_calibration

log = logging.getLogger(__name__)
THRESHOLDS = ("bayes", "far")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: no "alice\n", no "../x"
# The config sections that change what embedding a file gets besides the weights.
_FRONT_END = ("features", "frontend", "preprocess")


class DecisionError(ValueError):
    """A decision cannot be made as asked; the message names the file or field."""


@dataclass
class Decision:
    llr: float
    accept: bool
    threshold: float
    rule: str  # "bayes" or "far"

    def describe(self, cal: dict[str, Any]) -> str:
        why = (f"log((1-p)/p) at p_target={cal['p_target']:g}"
               if self.rule == "bayes" else f"dev false-accept rate {cal['far']:g}")
        return (f"{'accept' if self.accept else 'reject'} (LLR {self.llr:.3f} "
                f"{'>' if self.accept else '<='} {self.threshold:.3f}, the {self.rule} "
                f"threshold: {why})")


@dataclass
class CalibratedModel:
    ckpt: Any  # checkpoint.LoadedCheckpoint
    backend: str
    cal: dict[str, Any]  # calibration.json, with "calibration": scoring.calibration.Calibration
    fingerprint: str

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> CalibratedModel:
        """Checkpoint + calibration of ``model_dir``; one-line errors when either is missing."""
        from speakertune.checkpoint import load_checkpoint

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise DecisionError(f"{model_dir}: no such model directory")
        ckpt = load_checkpoint(model_dir, map_location=device)
        cal = load_calibration(model_dir)
        backend, _ = ckpt.ranked_backend()
        if cal["backend"] != backend:
            raise DecisionError(f"{model_dir}/calibration.json: fitted on backend "
                                f"{cal['backend']!r}, but the checkpoint ranked on {backend!r}")
        if backend not in ckpt.backends:
            raise DecisionError(f"{model_dir}: no fitted backend_{backend}.npz")
        return cls(ckpt, backend, cal, fingerprint(model_dir / "model.pt", ckpt.cfg, cal))

    def embed(self, files: Sequence[str | Path]) -> np.ndarray:
        """Raw embeddings [n, D] of audio ``files`` (error naming a file that fails)."""
        from speakertune.scoring.embed import embed_utterances

        for f in files:
            if "://" not in str(f) and not Path(f).is_file():
                raise DecisionError(f"{f}: no such audio file")
        df = pd.DataFrame({"utt": [f"f{i}" for i in range(len(files))],
                           "uri": [str(f) for f in files]})
        emb = embed_utterances(self.ckpt.encoder, df, self.ckpt.cfg,
                               max_seconds=self.cal.get("max_seconds"), load_workers=1)
        if emb.skipped:
            utt, why = next(iter(emb.skipped.items()))
            raise DecisionError(f"{files[int(utt[1:])]}: cannot embed ({why})")
        return np.stack([emb[u] for u in df["utt"]])

    def llrs(self, enrolls: Sequence[np.ndarray], test: np.ndarray) -> np.ndarray:
        """Calibrated LLR [k] of one test embedding [D] against each of ``k`` enrollments
        (each [m, D]: m files, combined in the backend's space)."""
        from speakertune.scoring.backends import score_trials

        emb = {"t": np.asarray(test)}
        rows = []
        for k, e in enumerate(enrolls):
            ids = [f"e{k}_{j}" for j in range(len(e))]
            emb.update(zip(ids, np.asarray(e)))
            rows.append((",".join(ids), "t"))
        trials = pd.DataFrame(rows, columns=["enroll", "test"])
        scores = score_trials(self.ckpt.backends[self.backend], emb, trials)
        return self.cal["calibration"](scores)

    def decide(self, llr: float, rule: str = "bayes") -> Decision:
        if rule not in THRESHOLDS:
            raise DecisionError(f"threshold {rule!r} is not one of {', '.join(THRESHOLDS)}")
        thr = float(self.cal["thresholds"][rule])
        return Decision(float(llr), bool(llr > thr), thr, rule)


def fingerprint(weights: Path, cfg: dict[str, Any], cal: dict[str, Any]) -> str:
    """SHA-256 over the weights, the front-end settings, the sample rate and the crop the
    calibration embeds with: what decides the embedding a file gets."""
    h = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    front = {k: cfg.get(k) for k in _FRONT_END}
    front |= {"sample_rate": (cfg.get("data") or {}).get("sample_rate"),
              "max_seconds": cal.get("max_seconds")}
    h.update(json.dumps(front, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _gallery_file(gallery: str | Path, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise DecisionError(f"speaker name {name!r}: use up to 128 letters, digits, '_', '-', "
                            "'.' (starting with a letter or digit)")
    return Path(gallery) / f"{name}.npz"


def enroll(model: CalibratedModel, name: str, files: Sequence[str | Path],
           gallery: str | Path, replace: bool = False) -> Path:
    """Embed ``files`` and store them as speaker ``name`` in ``gallery``; an enrolled ``name``
    is replaced only with ``replace``. The entry is written aside and renamed into place."""
    path = _gallery_file(gallery, name)
    if path.exists() and not replace:
        raise DecisionError(f"{path}: {name!r} is already enrolled; pass --replace to "
                            "enroll again")
    if not files:
        raise DecisionError(f"enroll {name}: no audio files")
    emb = model.embed(files)
    with written_aside(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, emb=emb, files=np.array([str(f) for f in files]),
                 model=np.array(model.fingerprint))
    return path


def load_gallery(model: CalibratedModel, gallery: str | Path) -> dict[str, np.ndarray]:
    """``name -> embeddings [m, D]`` of every speaker enrolled in ``gallery`` by this model;
    an unreadable entry is skipped with a warning naming it."""
    paths = sorted(p for p in Path(gallery).glob("*.npz") if _NAME.fullmatch(p.stem))
    if not paths:
        raise DecisionError(f"{gallery}: no enrolled speakers (run `speakertune enroll`)")
    out = {}
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as z:
                emb, fp = np.asarray(z["emb"], dtype=np.float32), str(z["model"])
            if emb.ndim != 2 or not len(emb) or not np.isfinite(emb).all():
                raise ValueError(f"embeddings of shape {emb.shape}, or not finite")
        except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError
            log.warning("%s: skipped, unreadable gallery entry (%s)", p, str(exc)[:200])
            continue
        if fp != model.fingerprint:
            raise DecisionError(f"{p}: enrolled with another model or front end; enroll "
                                "again with this one")
        out[p.stem] = emb
    if not out:
        raise DecisionError(f"{gallery}: every gallery entry is unreadable")
    return out


def identify(model: CalibratedModel, file: str | Path, gallery: str | Path, top: int = 5
             ) -> list[tuple[str, float]]:
    """The ``top`` enrolled speakers by calibrated LLR against ``file``, best first."""
    if top < 1:
        raise DecisionError(f"top must be >= 1, got {top}")
    speakers = load_gallery(model, gallery)
    llr = model.llrs(list(speakers.values()), model.embed([file])[0])
    order = np.argsort(-llr, kind="stable")[:top]
    names = list(speakers)
    return [(names[i], float(llr[i])) for i in order]
