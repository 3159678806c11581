"""A real-audio corpus of 2,000 speakers end to end on CPU: ``prepare voxceleb`` -> a one-trial,
one-epoch sweep validating with both backends (cosine and PLDA) -> the post-sweep test-list
evaluation (search/holdout.py). The point is correctness at speaker scale (a 1,860-way
classifier, the PLDA sample over ~1,800 speakers with 3-4 utterances each, generated dev trials,
an official-style test list), not accuracy: the model is the smallest TDNN. It lowers itself to
nice 10 once Ray is up (``local_ray.start_local_ray``).

    .venv/bin/python benchmarks/scale/e2e_scale.py [--speakers 2000] [--keep DIR]

Prints each stage's wall time, the peak memory (the driver's RSS; its whole process tree's, Ray
workers included, as PSS and as a sum of RSS, sampled from /proc every 0.5 s) and the dev and
test EERs with their 95% CIs. The baseline for the times is writing the WAV files (the floor:
the audio has to exist).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from speakertune.testing.local_ray import process_tree, renice, start_local_ray

RUN_ALL_SKIP = "about 20 minutes and 7,000 WAV files"

SR = 16000


def _voice(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    """A speaker: pitch and three formants (Hz)."""
    return {"f0": rng.uniform(85, 240),
            "formants": np.sort(rng.uniform([300, 900, 2200], [900, 2400, 3600]))}


def _utterance(v: dict, channel: np.ndarray, rng: np.random.Generator,
               seconds: float) -> np.ndarray:
    """Harmonics of a wandering pitch shaped by the speaker's formants, syllable-rate amplitude
    modulation, a per-session spectral tilt (``channel``) and noise at 10-20 dB SNR."""
    t = np.arange(int(seconds * SR), dtype=np.float32) / SR
    f0 = v["f0"] * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    k = np.arange(1, int(3800 / v["f0"]) + 1, dtype=np.float32)
    fk = k * v["f0"]
    gain = sum(1.0 / (1 + ((fk - f) / (60 + 0.08 * f)) ** 2) for f in v["formants"])
    gain = gain * np.exp(channel[0] * fk / 4000) / k ** 0.5
    x = (gain[:, None] * np.sin(k[:, None] * phase[None, :])).sum(0)
    x *= 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)))
    x /= np.sqrt(np.mean(x ** 2)) + 1e-9
    x += rng.normal(0, 10 ** (-rng.uniform(10, 20) / 20), x.shape)
    return (0.1 * x).astype(np.float32)


def write_corpus(root: Path, speakers: int, test_speakers: int, seconds: float,
                 seed: int = 0) -> Path:
    """``root/wav/idNNNNN/vidK/000MM.wav`` (speaker i has 3 or 4 utterances over 2 videos) and an
    official-style test list (``1 enroll test``) over the first ``test_speakers`` speakers."""
    rng = np.random.default_rng(seed)
    test_utts: list[tuple[str, str]] = []
    for s in range(speakers):
        v, spk = _voice(rng), f"id{s:05d}"
        channels = rng.normal(0, 0.5, (2, 1))
        for u in range(3 + s % 2):
            rel = f"{spk}/vid{u // 2}/{u:05d}.wav"
            (root / "wav" / spk / f"vid{u // 2}").mkdir(parents=True, exist_ok=True)
            sf.write(root / "wav" / rel, _utterance(v, channels[u // 2], rng, seconds), SR)
            if s < test_speakers:
                test_utts.append((spk, rel))
    lines = [f"{int(a[0] == b[0])} {a[1]} {b[1]}" for i, a in enumerate(test_utts)
             for b in test_utts[i + 1:]
             if a[0] != b[0] or a[1].split("/")[1] != b[1].split("/")[1]]  # targets cross videos
    targets = [x for x in lines if x[0] == "1"]
    others = [x for x in lines if x[0] == "0"]
    keep = rng.choice(len(others), size=min(len(others), 20 * len(targets)), replace=False)
    path = root / "veri_test.txt"
    path.write_text("\n".join(targets + [others[i] for i in sorted(keep)]) + "\n")
    return path


class PeakRSS:
    """Peak summed RSS of this process and all its descendants, sampled from /proc."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak_tree = self.peak_self = self.peak_rss_sum = 0
        self._every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    hold_nice: int | None = None  # set: keep the whole tree at this niceness (see below)

    @staticmethod
    def _pss(pid: int) -> int:
        """Proportional set size: shared pages (torch libraries, Ray's object store) split
        among the processes sharing them, so a sum over the tree does not count them twice."""
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = process_tree()
            if self.hold_nice is not None:
                renice(tree, self.hold_nice)
            self.peak_rss_sum = max(self.peak_rss_sum, sum(tree.values()))
            self.peak_tree = max(self.peak_tree, sum(self._pss(p) for p in tree))
            self.peak_self = max(self.peak_self, tree.get(os.getpid(), 0))
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def space_dict(out: Path, trials: Path, val_speakers: int) -> dict:
    """One trial, one epoch, the smallest TDNN, ranked on PLDA (cosine is computed too)."""
    return {
        "name": "e2e_scale",
        "base": {
            "data": {"corpus": "manifest", "manifest": str(out / "manifest.parquet"),
                     "val_speakers": val_speakers, "val_trials": 4000,
                     "min_seconds": 1.0, "max_seconds": 1.0,
                     "test": {"synth_o": {"trials": str(trials)}}},
            "features": {"name": "fbank", "num_mel_bins": 24},
            "model": {"name": "tdnn", "channels": 32, "out_channels": 64},
            "embed_dim": 32,
            "loss": {"name": "aam_softmax", "margin": 0.2, "scale": 30.0},
            "trainer": {"epochs": 1, "batch_size": 128},
        },
        "params": {"optimizer.lr": {"choice": [0.002]}},
        "search": {"num_samples": 1, "backend": "plda", "test_top_k": 1},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speakers", type=int, default=2000)
    ap.add_argument("--test-speakers", type=int, default=40)
    ap.add_argument("--val-speakers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="e2e_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    lines: list[tuple[float, str]] = []

    def log(msg: str) -> None:
        lines.append((time.perf_counter(), msg))
        print(msg, flush=True)

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        trials = write_corpus(work, args.speakers, args.test_speakers, args.seconds)
        times["write WAVs (baseline)"] = time.perf_counter() - t0

        from speakertune.commands import prepare

        t0 = time.perf_counter()
        rc = prepare.main(["voxceleb", str(work / "wav"), "--trials", str(trials),
                           "--out", str(work / "prep")])
        times["prepare voxceleb"] = time.perf_counter() - t0
        assert rc == 0, f"prepare failed ({rc})"

        import ray
        from speakertune.search.space import parse_space
        from speakertune.search.suggest import check_builds, check_data
        from speakertune.search.sweep import run_sweep

        space = parse_space(space_dict(work / "prep", work / "prep" / "trials.txt",
                                       args.val_speakers), "e2e_scale")
        t0 = time.perf_counter()
        check_builds(space)
        log(check_data(space))
        times["space + data check (driver)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not start_local_ray(2, niceness=10, log_to_driver=True):
            raise SystemExit("Ray did not start")
        rss.hold_nice = 10  # workers started later are set there too
        times["ray start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_sweep(space, storage=str(work / "runs"), report_root=str(work / "report"),
                           log=log)
        times["sweep (1 epoch, dev cosine+PLDA, test list, report)"] = time.perf_counter() - t0
        ray.shutdown()
        t0 = time.perf_counter()  # the sweep's test-list step once more, timed alone
        retest(work, space)
        times["test-list evaluation alone (holdout)"] = time.perf_counter() - t0
    report(work, times, rss, result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def retest(work: Path, space: object) -> None:
    """``search.holdout.evaluate_test_lists`` on the sweep's leaderboard: what the sweep ran."""
    import pandas as pd
    from speakertune.search.holdout import evaluate_test_lists

    lb = pd.read_csv(next((work / "report").glob("*/leaderboard.csv")))
    evaluate_test_lists(lb, space.trial_config({})["data"], top_k=1, backend="plda",
                        log=lambda m: print(f"(again) {m}", flush=True))


def report(work: Path, times: dict[str, float], rss: PeakRSS, result: object) -> None:
    import pandas as pd

    lb = pd.read_csv(next((work / "report").glob("*/leaderboard.csv")))
    row = lb.iloc[0]
    print("\n== e2e_scale figures")
    for k, v in times.items():
        print(f"{k:40s} {v:8.1f} s")
    base = times["write WAVs (baseline)"]
    print(f"{'prepare / write ratio':40s} {times['prepare voxceleb'] / base:8.2f}")
    print(f"peak RSS: driver {rss.peak_self / 2**30:.2f} GiB; process tree (Ray workers "
          f"included): PSS {rss.peak_tree / 2**30:.2f} GiB (sum of RSS, shared pages counted "
          f"per process, {rss.peak_rss_sum / 2**30:.2f} GiB)")
    cols = {c: row[c] for c in lb.columns if re.search(r"eer|dcf|epoch|trial", c)}
    for k, v in cols.items():
        print(f"  {k}: {v}")
    _ = result
    skip = ("write", "ray start", "test-list")  # the baseline, Ray, and the re-timed step
    pipeline = sum(v for k, v in times.items() if not k.startswith(skip))
    n = lb.get("test_synth_o_eer", pd.Series([float("nan")])).iloc[0]
    print(f"| e2e_scale: {work.name}, prepare -> 1 epoch (cosine+PLDA dev) -> test list | "
          f"{pipeline:.0f} s, peak PSS {rss.peak_tree / 2**30:.2f} GiB (tree) | "
          f"{base:.0f} s writing the WAVs | {base / pipeline:.2f}x | test EER {100 * n:.1f}% |")


if __name__ == "__main__":
    main()
