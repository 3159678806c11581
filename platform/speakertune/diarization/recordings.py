"""Diarize recordings with a saved checkpoint: one RTTM, a plot and embeddings per recording,
and with a reference RTTM a DER report (``der.json``). The library behind ``speakertune
diarize``.

An unreadable recording is skipped, counted and reported, not fatal; none readable is an error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speakertune.data.storage import write_text, written_aside
from speakertune.diarization.der import diarization_error
from speakertune.diarization.diarize import (
    Diarization,
    DiarizationError,
    DiarizeConfig,
    checkpoint_affinity,
    diarize,
)
from speakertune.diarization.rttm import Turn, read_rttm, write_rttm
from speakertune.scoring.calibration import CalibrationError, load_calibration

COLLAR_S = 0.25  # DER forgiveness collar around reference boundaries, seconds


@dataclasses.dataclass
class BatchResult:
    rttm: Path  # hypothesis.rttm, all recordings
    turns: list[Turn]
    files: dict[str, dict[str, Any]]  # file id -> DER scores, clusters, mapping (with reference)
    total: dict[str, float] | None  # DER over all read recordings (with reference)
    skipped: dict[str, str]  # uri -> why it could not be read


def _say(line: str) -> None:
    print(line, flush=True)


def plot_turns(path: Path, result: Diarization, reference: list[Turn], file_id: str,
               mapping: dict[str, str] | None = None) -> None:
    """Speech / reference / hypothesis rows; a hypothesis cluster mapped onto a reference
    speaker by the DER assignment gets that speaker's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("speech", [(s, e - s, "speech") for s, e in result.speech])]
    if reference:
        rows.append(("reference", [(t.start, t.duration, t.speaker) for t in reference]))
    mapping = mapping or {}
    rows.append(("hypothesis", [(t.start, t.duration, mapping.get(t.speaker, t.speaker))
                                for t in result.turns]))
    names = sorted({r[2] for _, row in rows for r in row})
    colour = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 1 + 0.6 * len(rows)))
    for y, (_, row) in enumerate(rows):
        for start, dur, name in row:
            ax.broken_barh([(start, dur)], (y - 0.35, 0.7), color=colour[name])
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.set(xlabel="time (s)", title=f"{file_id}: {result.info.get('clusters', 0)} clusters")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[n]) for n in names if n != "speech"]
    ax.legend(handles, [n for n in names if n != "speech"], loc="upper right", fontsize=7,
              ncol=min(len(handles), 6) or 1)
    fig.tight_layout()
    with written_aside(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _total_der(ref_turns: list[Turn], hyp: list[Turn], files: dict[str, dict[str, Any]],
               skipped: list, collar: float, out: Path, log: Callable[[str], None]) -> Any:
    """DER over the scored recordings, written to ``der.json`` with the per-file figures."""
    total = diarization_error([t for t in ref_turns if t.file in files], hyp, collar)
    report = {"files": files, "total": total.as_dict(), "collar": collar, "skipped": skipped}
    write_text(out / "der.json", json.dumps(report, indent=2))
    log(f"DER {100 * total.der:.2f}% (missed {total.missed:.2f}s, false alarm "
        f"{total.false_alarm:.2f}s, confusion {total.confusion:.2f}s, collar {collar}s)")
    return total


def calibrated_threshold(checkpoint: str | Path, backend: str) -> float:
    """The ``backend`` score at which the checkpoint's calibration gives LLR 0 (same speaker
    and different speakers equally likely): ``-b / a`` of its linear map. The calibration
    was fitted on dev trials of whole utterances; 1.5 s windows score lower, so this errs
    towards more speakers, which ``min_cluster_s`` and ``max_speakers`` bound."""
    try:
        cal = load_calibration(checkpoint)
    except CalibrationError as exc:
        raise DiarizationError(f"{exc}; pass --num-speakers or --threshold instead") from None
    if cal["backend"] != backend:
        raise DiarizationError(f"{checkpoint}/calibration.json calibrates {cal['backend']} "
                               f"scores, not {backend}: pass --backend {cal['backend']}, "
                               "--num-speakers or --threshold")
    return -float(cal["b"]) / float(cal["a"])


def diarize_files(
    checkpoint: str | Path, audio: Sequence[str], out_dir: str | Path, dcfg: DiarizeConfig, *,
    reference: str | Path | None = None, collar: float = COLLAR_S,
    log: Callable[[str], None] = _say,
) -> BatchResult:
    """Diarize every recording in ``audio`` and write ``hypothesis.rttm``, ``<file>.png``,
    ``<file>_embeddings.npy`` and, with ``reference``, ``der.json`` under ``out_dir``.
    ``dcfg.backend`` None: the backend the checkpoint was ranked on (said in the log)."""
    from speakertune.checkpoint import load_checkpoint
    from speakertune.data.audio import load_audio
    from speakertune.data.audio_files import AudioFiles

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    name, backend, why = checkpoint_affinity(ckpt, dcfg.validate().backend)
    dcfg = dataclasses.replace(dcfg, backend=name)
    log(f"backend {name}: {why}")
    if dcfg.threshold is None and dcfg.num_speakers is None:
        dcfg = dataclasses.replace(dcfg, threshold=calibrated_threshold(checkpoint, name))
        log(f"speaker count from {Path(checkpoint) / 'calibration.json'}: two windows are one "
            f"speaker when their calibrated LLR is above 0 (score above {dcfg.threshold:.4g})")
    ref_turns = read_rttm(reference) if reference else []
    if reference and not ref_turns:
        raise DiarizationError(f"{reference}: no SPEAKER lines, not a reference RTTM")
    sr = int(ckpt.cfg.get("data", {}).get("sample_rate", 16000))
    storage = ckpt.cfg.get("data", {}).get("storage") or None
    hyp: list[Turn] = []
    files: dict[str, dict[str, Any]] = {}
    recordings = AudioFiles(audio, lambda uri: load_audio(uri, sr, storage,
                                                       max_seconds=dcfg.max_seconds, keep="first"))
    for i, uri, wave in recordings:
        file_id = Path(str(uri)).stem
        t0 = time.monotonic()
        result = diarize(wave, sr, ckpt.encoder, ckpt.cfg, dcfg, file_id=file_id,
                         backend=backend)
        hyp += result.turns
        ref = [t for t in ref_turns if t.file == file_id]
        mapping: dict[str, str] = {}
        line = (f"[{i}/{len(audio)}] {file_id}: {len(wave) / sr:.1f}s audio, "
                f"{result.info['speech_s']:.1f}s speech, {result.info['windows']} windows, "
                f"{result.info.get('clusters', 0)} speakers")
        if ref_turns:
            if not ref:
                print(f"warning: {reference} has no turns for {file_id}", file=sys.stderr)
            der = diarization_error(ref, result.turns, collar)
            scores = der.as_dict()
            mapping = der.mapping.get(file_id, {})
            files[file_id] = scores | {"clusters": result.info.get("clusters", 0),
                                       "mapping": mapping}
            line += f", DER {100 * scores['der']:.1f}%"
        log(f"{line} ({time.monotonic() - t0:.1f}s)")
        plot_turns(out / f"{file_id}.png", result, ref, file_id, mapping)
        with written_aside(out / f"{file_id}_embeddings.npy") as tmp:
            np.save(tmp, result.embeddings)
    skipped = recordings.skipped
    if skipped:
        log(f"skipped {len(skipped)} of {len(audio)} recordings (unreadable audio)")
    recordings.check_any(DiarizationError, "recording")
    write_rttm(hyp, out / "hypothesis.rttm")
    total = _total_der(ref_turns, hyp, files, skipped, collar, out, log) if ref_turns else None
    return BatchResult(out / "hypothesis.rttm", hyp, files,
                       total.as_dict() if total else None, skipped)
