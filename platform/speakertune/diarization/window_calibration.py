"""Speaker-count rules chosen on dev meetings: AHC's stopping score (window pairs of one
recording scored by the checkpoint's backend, calibrated to LLRs against the meetings'
reference speakers) and spectral clustering's k-NN size (the one whose eigengap miscounts the
dev meetings' speakers least).

``calibration.json`` comes from dev trials of whole utterances across sessions. Windows of one
meeting are 1.5 s long and a talker keeps a channel, so their scores sit on another scale
(PLDA most of all): the utterance threshold merged different speakers. Here the dev speakers
(held out of training, as for every other decision) are put into the built-in meetings
(``meetings.py``), and a linear calibration is fitted on their window pairs, each window
labelled by the reference speaker covering most of it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speakertune.data.corpus import load_corpus
from speakertune.data.storage import write_text
from speakertune.diarization.clustering import cluster_spectral
from speakertune.diarization.diarize import DiarizeConfig, affinity_matrix, embed_recording
from speakertune.diarization.meetings import MEETING_SPEAKERS, write_meetings
from speakertune.diarization.rttm import Turn, read_rttm
from speakertune.scoring.calibration import fit_linear
from speakertune.scoring.metrics import eer

WINDOW_CALIBRATION = "window_calibration.json"
COVER = 0.8  # a window is labelled only when one speaker covers this share of it
# spectral's k-NN sizes tried on the dev meetings; the one whose eigengap miscounts least wins
NEIGHBOUR_CHOICES = (3, 5, 7, 10, 15, 20)


def window_speakers(windows: np.ndarray, turns: Sequence[Turn]) -> list[str | None]:
    """The reference speaker covering at least ``COVER`` of each [start, end) window, or None
    (a window over a speaker change, overlap or a pause)."""
    out: list[str | None] = []
    for start, end in windows:
        cover: dict[str, float] = {}
        for t in turns:
            overlap = min(end, t.end) - max(start, t.start)
            if overlap > 0:
                cover[t.speaker] = cover.get(t.speaker, 0.0) + overlap
        best = max(cover, key=cover.get) if cover else None
        out.append(best if best and cover[best] >= COVER * (end - start) else None)
    return out


def labelled_pairs(speakers: list[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same speaker 0/1) over every pair of labelled windows."""
    keep = np.flatnonzero([s is not None for s in speakers])
    names = np.asarray(speakers, dtype=object)[keep]
    i, j = np.triu_indices(len(keep), k=1)
    return keep[i], keep[j], (names[i] == names[j]).astype(int)


def fit_window_calibration(
    ckpt: Any, dev: Any, read: Callable[[str], np.ndarray], dcfg: DiarizeConfig, *,
    sample_rate: int = 16000, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per backend of the loaded checkpoint ``ckpt``: the linear calibration ``a``, ``b`` of
    window-pair scores in meetings of the ``dev`` speakers (rows with ``uri``, ``spk``,
    ``session``), its LLR-0 ``threshold``, the pairs used and their EER, and spectral's
    ``neighbours`` with the speakers each choice miscounted.

    Example: ``fit_window_calibration(load_checkpoint("best"), corpus.val, read,
    DiarizeConfig())["cosine"]["threshold"]`` -> 0.41.
    """
    counts = [n for n in MEETING_SPEAKERS if n <= dev["spk"].nunique()]
    if not counts or not ckpt.backends:
        raise ValueError("window calibration needs 2 dev speakers and a fitted backend")
    affs: dict[str, list[np.ndarray]] = {name: [] for name in ckpt.backends}
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        wavs, rttm = write_meetings(dev, tmp, read, speakers=counts, sample_rate=sample_rate,
                                    seed=seed, one_session=True)
        ref = read_rttm(rttm)
        for wav in wavs:
            emb = embed_recording(read(str(wav)), sample_rate, ckpt.encoder, ckpt.cfg, dcfg,
                                  wav.stem)
            pairs.append(labelled_pairs(
                window_speakers(emb.windows, [t for t in ref if t.file == wav.stem])))
            for name, backend in ckpt.backends.items():
                affs[name].append(affinity_matrix(emb.embeddings, backend))
    y = np.concatenate([same for _, _, same in pairs])
    out = {}
    for name, mats in affs.items():
        s = np.concatenate([m[i, j] for m, (i, j, _) in zip(mats, pairs)])
        cal = fit_linear(s, y, 0.5)
        a, b = float(cal.weights[0]), float(cal.bias)
        miscount = _spectral_miscounts(mats, counts, -b / a, dcfg)
        out[name] = {"a": a, "b": b, "threshold": -b / a, "pairs": int(len(y)),
                     "same": int(y.sum()), "eer": float(eer(s, y)[0]),
                     "neighbours": min(miscount, key=miscount.get),
                     "neighbours_miscount": {str(k): v for k, v in miscount.items()}}
    return out


def _spectral_miscounts(affs: list[np.ndarray], counts: list[int], threshold: float,
                        dcfg: DiarizeConfig) -> dict[int, int]:
    """k-NN size -> speakers miscounted over the meetings by spectral clustering as diarize
    runs it (eigengap, small clusters absorbed, clusters above ``threshold`` merged)."""
    min_size = dcfg.min_cluster_windows
    return {k: sum(abs(len(set(cluster_spectral(aff, neighbours=k, min_size=min_size,
                                                 threshold=threshold))) - n)
                   for aff, n in zip(affs, counts))
            for k in NEIGHBOUR_CHOICES}


def dev_speakers(data_cfg: dict[str, Any]) -> Any:
    """The checkpoint's dev rows (held-out speakers) from its ``data`` config; a ValueError or
    OSError when they cannot be read here (a built-in corpus is never rebuilt for this)."""
    if data_cfg.get("corpus") == "synthetic" and not (
            Path(str(data_cfg.get("root"))) / ".complete.json").is_file():
        raise ValueError(f"the built-in corpus is not at {data_cfg.get('root')}")
    return load_corpus(data_cfg).val


def write_window_calibration(path: str | Path, fitted: dict[str, Any], meta: dict[str, Any]
                             ) -> Path:
    """``fitted`` (per backend) plus ``meta`` (where it came from) as JSON, written aside."""
    path = Path(path)
    write_text(path, json.dumps({"backends": fitted, **meta}, indent=2))
    return path
