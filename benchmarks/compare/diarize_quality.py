"""Diarization error on the built-in meetings (``diarization/meetings.py``: 2-8 held-out
speakers, short uneven turns across sessions and channels, pauses, a little overlap) with a
sweep's checkpoint: DER for each backend x clustering method x oracle/estimated count
(ours) against the pre-#27 path, raw window cosine + AHC with the oracle count (baseline).

    .venv/bin/python benchmarks/compare/diarize_quality.py [--checkpoint runs/quickstart/best]
        [--quick] [--variants]

The meetings use the corpus's dev speakers (held out of training; the built-in corpus has no
test speakers). ``--variants`` adds the settings measured to choose the defaults: linkage,
per-recording centring, spectral neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from speakertune.checkpoint import load_checkpoint
from speakertune.data.audio import load_audio
from speakertune.data.corpus import load_corpus
from speakertune.diarization.der import diarization_error
from speakertune.diarization.diarize import DiarizeConfig, embed_recording, label_windows
from speakertune.diarization.meetings import MEETING_SPEAKERS, write_meetings
from speakertune.diarization.recordings import COLLAR_S, calibrated_threshold, speaker_seconds
from speakertune.diarization.rttm import read_rttm
from speakertune.diarization.window_calibration import fit_window_calibration

RUN_ALL_SKIP = "needs a sweep's checkpoint (make sweep writes runs/quickstart/best)"


def settings(backends: list[str], variants: bool) -> list[tuple[str, str, str, dict]]:
    """(backend, method, count, DiarizeConfig overrides) to score."""
    rows = []
    for b in backends:
        for method in ("ahc", "spectral"):
            for count in ("oracle", "estimated"):
                rows.append((b, method, count, {}))
                if variants:
                    extra = ([{"linkage": "complete"}] if method == "ahc"
                             else [{"neighbours": n} for n in (5, 10, 20)])
                    extra += [{"centre": True}, {"reassign": 0}, {"min_cluster_s": 0.0}]
                    extra.append({"threshold": "calibration.json" if method == "ahc"
                                  else "no merge"})
                    rows += [(b, method, count, e) for e in extra]
    return rows


def score(embedded: dict, ref: list, dcfg: DiarizeConfig, backend) -> tuple[float, int, float]:
    """DER over all meetings, speaker-count error (sum |found - true|), and the worst excess
    of the largest cluster's share of speech over the reference's largest talker's share
    (near 0: no collapse; 0.5: half the meeting's speech put with its main talker)."""
    hyp, count_err, worst = [], 0, 0.0
    for file_id, (emb, n) in embedded.items():
        cfg = dcfg if dcfg.num_speakers is None else dataclasses.replace(dcfg, num_speakers=n)
        out = label_windows(emb, cfg, backend)
        hyp += out.turns
        count_err += abs(out.info["clusters"] - n)
        found = speaker_seconds(out.turns)
        truth = speaker_seconds([t for t in ref if t.file == file_id])
        worst = max(worst, max(found.values()) / sum(found.values())
                    - max(truth.values()) / sum(truth.values()))
    return diarization_error(ref, hyp, COLLAR_S).der, count_err, worst


def embed_meetings(ckpt, corpus, read, speakers, seeds: int, mixed: bool, base: DiarizeConfig
                   ) -> tuple[dict, list]:
    """Meetings of the dev speakers, each embedded once: ({file: (embedded, talkers)}, ref)."""
    sr = int(ckpt.cfg["data"].get("sample_rate", 16000))
    embedded, refs = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            wavs, rttm = write_meetings(corpus.val, Path(tmp) / str(seed), read,
                                        speakers=speakers, sample_rate=sr, seed=seed,
                                        one_session=not mixed)
            refs += [dataclasses.replace(t, file=f"{t.file}-{seed}") for t in read_rttm(rttm)]
            for wav, n in zip(wavs, speakers):
                fid = f"{wav.stem}-{seed}"
                embedded[fid] = (embed_recording(load_audio(wav, sr), sr, ckpt.encoder,
                                                 ckpt.cfg, base, fid), n)
    return embedded, refs


def rows(embedded, refs, ckpt, fitted, utterance, base, variants) -> dict:
    """Print one table row per setting; return {(backend, method, count): DER} of defaults."""
    ours = {}
    for b, method, count, extra in settings(list(utterance), variants):
        threshold = fitted[b]["threshold"] if count == "estimated" else None
        if extra.get("threshold") == "calibration.json":
            threshold = utterance[b] if count == "estimated" else None
        elif extra.get("threshold") == "no merge":
            threshold = None
        chosen = fitted[b]["neighbours"] if method == "spectral" and count == "estimated" else 0
        dcfg = dataclasses.replace(base, method=method,
                                   **({"neighbours": chosen} | extra | {"threshold": threshold}),
                                   num_speakers=1 if count == "oracle" else None)
        der, cerr, worst = score(embedded, refs, dcfg, ckpt.backends[b])
        if not extra:
            ours[(b, method, count)] = der
        print(f"| {b} | {method} | {count} | {extra or 'default'} | {100 * der:.1f} | {cerr} "
              f"| {worst:.2f} |", flush=True)
    return ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/quickstart/best")
    ap.add_argument("--quick", action="store_true", help="meetings of 2, 4 and 8 speakers")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--seeds", type=int, default=1, help="sets of meetings")
    ap.add_argument("--mixed-sessions", action="store_true",
                    help="a talker's turns come from all their sessions (channel changes "
                         "mid-meeting); default: one session per talker per meeting")
    args = ap.parse_args()
    if not Path(args.checkpoint).is_dir():
        sys.exit(f"{args.checkpoint}: no checkpoint; run `make sweep` first")
    ckpt = load_checkpoint(args.checkpoint)
    data = ckpt.cfg["data"]
    sr, storage = int(data.get("sample_rate", 16000)), data.get("storage") or None
    corpus = load_corpus(data)
    speakers = (2, 4, 8) if args.quick else MEETING_SPEAKERS
    base = DiarizeConfig()
    t0 = time.perf_counter()
    read = lambda u: load_audio(u, sr, storage)  # noqa: E731
    embedded, refs = embed_meetings(ckpt, corpus, read, speakers, args.seeds,
                                    args.mixed_sessions, base)
    audio_s = sum(e.info["speech_s"] for e, _ in embedded.values())
    print(f"{len(embedded)} meetings ({', '.join(map(str, speakers))} speakers), "
          f"{audio_s:.0f}s speech, embedded in {time.perf_counter() - t0:.0f}s", flush=True)
    # The count rules as diarize_files fits them: on meetings of the same dev speakers with
    # another seed than the scored ones; and the utterance calibration's LLR 0, for comparison
    fitted = fit_window_calibration(ckpt, corpus.val, read, base, sample_rate=sr, seed=1000)
    utterance = {b: calibrated_threshold(args.checkpoint, b)
                 for b in ("cosine", "plda") if b in ckpt.backends}
    for b in utterance:
        print(f"{b}: window-pair LLR 0 at {fitted[b]['threshold']:.4g} (EER "
              f"{100 * fitted[b]['eer']:.1f}% on {fitted[b]['pairs']} pairs), calibration.json's "
              f"at {utterance[b]:.4g}; spectral neighbours {fitted[b]['neighbours']} "
              f"(miscounts {fitted[b]['neighbours_miscount']})")
    print(f"meetings: {'sessions mixed' if args.mixed_sessions else 'one session per talker'}")
    print("| backend | method | count | setting | DER % | count error | worst share excess |")
    print("|---|---|---|---|---|---|---|")
    ours = rows(embedded, refs, ckpt, fitted, utterance, base, args.variants)
    base_der, _, base_worst = score(embedded, refs, dataclasses.replace(
        base, num_speakers=1, min_cluster_s=0.0, reassign=0), None)
    print(f"baseline (raw cosine, AHC, oracle count, no small-cluster absorption): "
          f"DER {100 * base_der:.1f}%, worst share excess {base_worst:.2f}")
    worst_est = max(v for k, v in ours.items() if k[2] == "estimated")
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(f"| diarization DER, built-in meetings ({len(embedded)} meetings, 2-8 speakers) "
          f"| worst estimated-count DER {100 * worst_est:.1f}% (backend x method) "
          f"| raw cosine AHC oracle {100 * base_der:.1f}% | {base_der / max(worst_est, 1e-9):.2f}x "
          f"lower DER | {args.checkpoint} |")


if __name__ == "__main__":
    main()
