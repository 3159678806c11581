"""Diarize recordings with a trained checkpoint; score against a reference RTTM if given.

    python jobs/diarize.py --checkpoint runs/x/ckpt --audio a.wav b.flac --out runs/diar \
        --num-speakers 2 --reference ref.rttm

Writes ``hypothesis.rttm`` (all recordings), ``<file>.png`` (speech, windows' clusters, and
reference vs hypothesis turns) and, with ``--reference``, ``der.json`` (per file and total).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from speakertune.checkpoint import load_checkpoint
from speakertune.data.audio import load_audio
from speakertune.data.errors import AudioError
from speakertune.diarization.der import diarization_error
from speakertune.diarization.diarize import DiarizationError, DiarizeConfig, diarize
from speakertune.diarization.rttm import Turn, read_rttm, write_rttm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--audio", nargs="+", required=True, help="recordings (local or s3://)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--window", type=float, default=1.5, help="window length, seconds")
    p.add_argument("--hop", type=float, default=0.75, help="window hop, seconds")
    p.add_argument("--backend", choices=["cosine", "plda"], default="cosine")
    stop = p.add_mutually_exclusive_group(required=True)
    stop.add_argument("--threshold", type=float, help="stop merging below this affinity")
    stop.add_argument("--num-speakers", type=int, help="known number of speakers")
    p.add_argument("--linkage", default="average", choices=["average", "complete", "single"])
    p.add_argument("--vad-db", type=float, default=30.0, help="speech within N dB of loud frames")
    p.add_argument("--reference", help="reference RTTM for DER")
    p.add_argument("--collar", type=float, default=0.25, help="DER forgiveness collar, seconds")
    return p.parse_args(argv)


def plot_turns(path: Path, result, reference: list[Turn], file_id: str,
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)
    backend = None
    if args.backend == "plda":
        backend = ckpt.backends.get("plda")
        if backend is None:
            raise DiarizationError(f"{args.checkpoint}: --backend plda but no fitted PLDA saved")
    dcfg = DiarizeConfig(window_s=args.window, hop_s=args.hop, backend=args.backend,
                         threshold=args.threshold, num_speakers=args.num_speakers,
                         linkage=args.linkage, vad_db=args.vad_db).validate()
    reference = read_rttm(args.reference) if args.reference else []
    if args.reference and not reference:
        raise DiarizationError(f"{args.reference}: no SPEAKER lines, not a reference RTTM")
    sr = int(ckpt.cfg.get("data", {}).get("sample_rate", 16000))
    storage = ckpt.cfg.get("data", {}).get("storage") or None
    hyp: list[Turn] = []
    report: dict = {"files": {}}
    skipped: dict[str, str] = {}
    for i, uri in enumerate(args.audio, 1):
        file_id = Path(str(uri)).stem
        t0 = time.monotonic()
        try:
            wave = load_audio(uri, sr, storage)
        except AudioError as exc:  # one bad file should not sink the batch: count, report
            skipped[str(uri)] = str(exc)
            print(f"[{i}/{len(args.audio)}] skipped: {exc}", file=sys.stderr, flush=True)
            continue
        result = diarize(wave, sr, ckpt.encoder, ckpt.cfg, dcfg, file_id=file_id,
                         backend=backend)
        hyp += result.turns
        ref = [t for t in reference if t.file == file_id]
        mapping: dict[str, str] = {}
        line = (f"[{i}/{len(args.audio)}] {file_id}: {len(wave) / sr:.1f}s audio, "
                f"{result.info['speech_s']:.1f}s speech, {result.info['windows']} windows, "
                f"{result.info.get('clusters', 0)} speakers")
        if reference:
            if not ref:
                print(f"warning: {args.reference} has no turns for {file_id}", file=sys.stderr)
            der = diarization_error(ref, result.turns, args.collar)
            scores = der.as_dict()
            mapping = der.mapping.get(file_id, {})
            report["files"][file_id] = scores | {"clusters": result.info.get("clusters", 0),
                                                 "mapping": mapping}
            line += f", DER {100 * scores['der']:.1f}%"
        print(f"{line} ({time.monotonic() - t0:.1f}s)", flush=True)
        plot_turns(out / f"{file_id}.png", result, ref, file_id, mapping)
        np.save(out / f"{file_id}_embeddings.npy", result.embeddings)
    if skipped:
        print(f"skipped {len(skipped)} of {len(args.audio)} recordings (unreadable audio)")
    if len(skipped) == len(args.audio):
        raise DiarizationError("no recording could be read: " + next(iter(skipped.values())))
    write_rttm(hyp, out / "hypothesis.rttm")
    if reference:
        files = set(report["files"])
        total = diarization_error([t for t in reference if t.file in files], hyp, args.collar)
        report["total"] = total.as_dict()
        report["collar"] = args.collar
        report["skipped"] = skipped
        (out / "der.json").write_text(json.dumps(report, indent=2))
        print(f"DER {100 * total.der:.2f}% (missed {total.missed:.2f}s, false alarm "
              f"{total.false_alarm:.2f}s, confusion {total.confusion:.2f}s, collar {args.collar}s)")
    print(f"wrote {out / 'hypothesis.rttm'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as exc:  # project errors are ValueErrors: one line each
        sys.exit(f"error: {exc}")
