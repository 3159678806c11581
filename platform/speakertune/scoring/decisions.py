"""Calibrated decisions with an exported model (a sweep's ``best/``): verify, enroll, identify.

A model directory is a checkpoint plus ``calibration.json`` (``scoring.calibration``). Audio
goes through the one embedding path (``scoring.embed``), with the crop the calibration's dev
scores were made with, and is scored by the checkpoint's ranked backend, the one the
calibration was fitted on; ``score_trials`` combines multi-file enrollments as evaluation
does. The calibrated LLR is compared with one of the calibration's thresholds: ``bayes`` (the
Bayes decision at its ``p_target``) or ``far`` (the dev false-accept rate it was set at).

A gallery is a folder of ``<name>.npz`` files (raw embeddings [n, D] of the enrolled files and
the SHA-256 of the ``model.pt`` that made them, so a gallery is never scored by another model).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speakertune.scoring.calibration import load_calibration

THRESHOLDS = ("bayes", "far")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        digest = hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()
        return cls(ckpt, backend, cal, digest)

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


def _gallery_file(gallery: str | Path, name: str) -> Path:
    if not _NAME.match(name):
        raise DecisionError(f"speaker name {name!r}: use letters, digits, '_', '-', '.'")
    return Path(gallery) / f"{name}.npz"


def enroll(model: CalibratedModel, name: str, files: Sequence[str | Path],
           gallery: str | Path) -> Path:
    """Embed ``files`` and store them as speaker ``name`` in ``gallery`` (replacing it)."""
    path = _gallery_file(gallery, name)
    if not files:
        raise DecisionError(f"enroll {name}: no audio files")
    emb = model.embed(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, emb=emb, files=np.array([str(f) for f in files]),
                 model=np.array(model.fingerprint))
    return path


def load_gallery(model: CalibratedModel, gallery: str | Path) -> dict[str, np.ndarray]:
    """``name -> embeddings [m, D]`` of every speaker enrolled in ``gallery`` by this model."""
    paths = sorted(Path(gallery).glob("*.npz"))
    if not paths:
        raise DecisionError(f"{gallery}: no enrolled speakers (run `speakertune enroll`)")
    out = {}
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as z:
                emb, fp = z["emb"], str(z["model"])
        except (OSError, ValueError, KeyError) as exc:
            raise DecisionError(f"{p}: unreadable gallery entry ({exc})") from None
        if fp != model.fingerprint:
            raise DecisionError(f"{p}: enrolled with another model; enroll again with this one")
        out[p.stem] = emb
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
