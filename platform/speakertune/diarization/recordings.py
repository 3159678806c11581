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

from speakertune.checkpoint import load_checkpoint, load_val_scores
from speakertune.data.audio import load_audio
from speakertune.data.audio_files import AudioFiles
from speakertune.data.storage import write_text, written_aside
from speakertune.diarization.clustering import NEIGHBOURS
from speakertune.diarization.der import diarization_error
from speakertune.diarization.diarize import (
    Diarization,
    DiarizationError,
    DiarizeConfig,
    checkpoint_affinity,
    diarize,
)
from speakertune.diarization.rttm import Turn, read_rttm, write_rttm
from speakertune.diarization.window_calibration import (
    WINDOW_CALIBRATION,
    dev_speakers,
    fit_window_calibration,
    write_window_calibration,
)
from speakertune.scoring.calibration import CalibrationError, fit_linear, load_calibration

COLLAR_S = 0.25  # DER forgiveness collar around reference boundaries, seconds


@dataclasses.dataclass
class BatchResult:
    rttm: Path  # hypothesis.rttm, all recordings
    turns: list[Turn]
    files: dict[str, dict[str, Any]]  # file id -> recording_report (DER with a reference)
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


def speaker_seconds(turns: Sequence[Turn]) -> dict[str, float]:
    """Speaker -> seconds of speech in ``turns``, largest first."""
    total: dict[str, float] = {}
    for t in turns:
        total[t.speaker] = total.get(t.speaker, 0.0) + t.duration
    return {k: round(v, 2) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def recording_report(result: Diarization, ref: list[Turn] | None, collar: float
                     ) -> dict[str, Any]:
    """What a person checks per recording: speech, speakers found, each cluster's seconds and
    the largest one's share; with a reference (``ref`` not None) its speakers' seconds, DER
    and the cluster -> reference speaker mapping."""
    found = speaker_seconds(result.turns)
    report: dict[str, Any] = {
        "speech_s": round(result.info["speech_s"], 2), "windows": result.info["windows"],
        "clusters": len(found), "cluster_s": found,
        "largest_share": round(max(found.values()) / sum(found.values()), 3) if found else 0.0}
    if ref is not None:
        der = diarization_error(ref, result.turns, collar)
        report |= der.as_dict() | {"reference_s": speaker_seconds(ref),
                                   "mapping": der.mapping.get(result.info["file"], {})}
    return report


def _describe(rep: dict[str, Any]) -> str:
    line = (f"{rep['speech_s']:.1f}s speech, {rep['windows']} windows, {rep['clusters']} "
            f"speakers (largest {100 * rep['largest_share']:.0f}% of speech)")
    if "der" in rep:
        line += f", reference {len(rep['reference_s'])} speakers, DER {100 * rep['der']:.1f}%"
    return line


def summary_table(files: dict[str, dict[str, Any]]) -> str:
    """``summary.md``: one row per recording, clusters' and reference speakers' seconds side
    by side (largest first), so a collapse into one cluster is visible at a glance."""
    ref = any("der" in r for r in files.values())
    head = "| recording | speech s | speakers found | cluster seconds | largest share |"
    rule = "|---|---|---|---|---|"
    if ref:
        head += " reference speakers | reference seconds | DER % |"
        rule += "---|---|---|"
    rows = [head, rule]
    for name, r in files.items():
        row = (f"| {name} | {r['speech_s']:.1f} | {r['clusters']} | "
               f"{' / '.join(f'{v:.1f}' for v in r['cluster_s'].values())} | "
               f"{100 * r['largest_share']:.0f}% |")
        if "der" in r:
            row += (f" {len(r['reference_s'])} | "
                    f"{' / '.join(f'{v:.1f}' for v in r['reference_s'].values())} | "
                    f"{100 * r['der']:.1f} |")
        rows.append(row)
    return "\n".join(rows) + "\n"


def calibrated_threshold(checkpoint: str | Path, backend: str) -> float:
    """The ``backend`` score at which the checkpoint's calibration gives LLR 0 (same speaker
    and different speakers equally likely): ``-b / a`` of its linear map. ``calibration.json``
    calibrates the backend the checkpoint was ranked on; another backend's map is fitted the
    same way on its own dev scores (``val_scores.npz``). The calibration was fitted on dev
    trials of whole utterances; 1.5 s windows score lower, so this errs towards more
    speakers, which ``min_cluster_s`` and ``max_speakers`` bound."""
    try:
        cal = load_calibration(checkpoint)
        if cal["backend"] != backend:
            scores, labels = load_val_scores(str(checkpoint), backend)
            fitted = fit_linear(scores, labels, float(cal["p_target"]))
            cal = {"a": float(fitted.weights[0]), "b": fitted.bias}
    except (CalibrationError, ValueError, OSError) as exc:
        raise DiarizationError(f"{exc}; pass --num-speakers or --threshold instead, or "
                               "--method spectral") from None
    return -float(cal["b"]) / float(cal["a"])


def _count_rule(dcfg: DiarizeConfig, checkpoint: str | Path, ckpt: Any, out: Path,
                log: Callable[[str], None]) -> DiarizeConfig:
    """Without a count or threshold: AHC stops merging where clusters' mean window-pair LLR is
    0; spectral clustering merges the eigengap's clusters above it, with the k-NN size (unless
    given) that miscounts least. Both are chosen on meetings of the checkpoint's dev speakers
    when they are readable here (``window_calibration.py``); else AHC uses calibration.json's
    dev trials and spectral the eigengap alone. Logged."""
    spectral = dcfg.method == "spectral"
    if dcfg.num_speakers is not None or dcfg.threshold is not None:
        return dcfg
    data = ckpt.cfg.get("data") or {}
    sr = int(data.get("sample_rate", 16000))
    try:
        fitted = fit_window_calibration(ckpt, dev_speakers(data), lambda u: load_audio(
            u, sr, data.get("storage") or None), dcfg, sample_rate=sr)
    except (ValueError, OSError) as exc:
        why = f"dev meetings unavailable: {str(exc).splitlines()[0]}"
        if spectral:
            k = dcfg.neighbours or NEIGHBOURS
            log(f"speaker count from the largest eigengap of a {k}-NN graph ({why})")
            return dataclasses.replace(dcfg, neighbours=k)
        threshold = calibrated_threshold(checkpoint, dcfg.backend)
        log(f"speaker count from {Path(checkpoint) / 'calibration.json'} ({why}): windows are "
            f"one speaker when their LLR is above 0 (score above {threshold:.4g})")
        return dataclasses.replace(dcfg, threshold=threshold)
    fit = fitted[dcfg.backend]
    write_window_calibration(out / WINDOW_CALIBRATION, fitted, {"checkpoint": str(checkpoint)})
    where = f"meetings of the dev speakers ({out / WINDOW_CALIBRATION})"
    rule = (f"clusters are one speaker when their windows' mean LLR is above 0 (score above "
            f"{fit['threshold']:.4g}), calibrated on {fit['pairs']} window pairs of {where}")
    if spectral:
        k = dcfg.neighbours or fit["neighbours"]
        chosen = "" if dcfg.neighbours else " (the size that miscounted least on them)"
        log(f"speaker count from the largest eigengap of a {k}-NN graph{chosen}, then {rule}")
        return dataclasses.replace(dcfg, neighbours=k, threshold=fit["threshold"])
    log(f"speaker count: {rule}")
    return dataclasses.replace(dcfg, threshold=fit["threshold"])


def diarize_files(
    checkpoint: str | Path, audio: Sequence[str], out_dir: str | Path, dcfg: DiarizeConfig, *,
    reference: str | Path | None = None, collar: float = COLLAR_S,
    log: Callable[[str], None] = _say,
) -> BatchResult:
    """Diarize every recording in ``audio`` and write ``hypothesis.rttm``, ``summary.md``
    (per recording: speakers found, seconds per cluster), ``<file>.png``,
    ``<file>_embeddings.npy`` and, with ``reference``, ``der.json`` under ``out_dir``.
    ``dcfg.backend`` None: the backend the checkpoint was ranked on (said in the log)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    name, backend, why = checkpoint_affinity(ckpt, dcfg.validate().backend)
    dcfg = dataclasses.replace(dcfg, backend=name)
    log(f"backend {name}: {why}")
    dcfg = _count_rule(dcfg, checkpoint, ckpt, out, log)
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
        if ref_turns and not ref:
            print(f"warning: {reference} has no turns for {file_id}", file=sys.stderr)
        files[file_id] = recording_report(result, ref if ref_turns else None, collar)
        log(f"[{i}/{len(audio)}] {file_id}: {len(wave) / sr:.1f}s audio, "
            f"{_describe(files[file_id])} ({time.monotonic() - t0:.1f}s)")
        plot_turns(out / f"{file_id}.png", result, ref, file_id, files[file_id].get("mapping"))
        with written_aside(out / f"{file_id}_embeddings.npy") as tmp:
            np.save(tmp, result.embeddings)
    skipped = recordings.skipped
    if skipped:
        log(f"skipped {len(skipped)} of {len(audio)} recordings (unreadable audio)")
    recordings.check_any(DiarizationError, "recording")
    write_rttm(hyp, out / "hypothesis.rttm")
    write_text(out / "summary.md", summary_table(files))
    total = _total_der(ref_turns, hyp, files, skipped, collar, out, log) if ref_turns else None
    return BatchResult(out / "hypothesis.rttm", hyp, files,
                       total.as_dict() if total else None, skipped)
