"""The built-in synthetic corpus: espeak-ng speakers recorded in several sessions, each through
its own channel, plus a noise bank and a simulated RIR bank for augmentation.

Speaker identity = a base espeak voice (language accent + voice variant, shared by several
speakers so the task is not trivial) plus fixed pitch, pitch range, speaking rate and a
vocal-tract-length factor ``alpha`` applied by resampling (formants and pitch scale by alpha).
Each utterance is 2-3 sentences from a built-in pool with small per-utterance jitter of those
parameters. A speaker's utterances are split into ``sessions``; each session has its own
channel (``channels.py``: room, noise type and SNR, microphone band and tilt), as each video of
a VoxCeleb speaker does, so trials cross channels. Written as 16 kHz FLAC.

Layout under ``root`` (manifests use root-relative URIs, see ``manifest.py``)::

    wav/<spk>/<utt>.flac  manifest.parquet  trials.txt  speakers.csv  summary.md  durations.png
    channels/room_*.flac                  (the session channels' rooms, not for augmentation)
    noise/*.flac noise/manifest.parquet   (category: noise | music | speech)
    rir/*.flac   rir/manifest.parquet     (columns rt60 target, rt60_measured, room)
    .complete.json                        (written last; absent => half-built => rebuilt)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import resample_poly

from speakertune.data.channels import apply_channel, draw_channel
from speakertune.data.errors import DataError
from speakertune.data.manifest import write_manifest
from speakertune.data.sentences import SENTENCES
from speakertune.data.split import make_trials, split_by_speaker
from speakertune.data.summary import write_summary
from speakertune.data.trials import write_trials

SAMPLE_RATE = 16000
VERSION = 2  # 2: sessions with their own channels
_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
N_BASE_VOICES = 12  # 100 speakers -> ~8 speakers per base voice
BABBLE_SPEAKERS = 6  # held-out speakers (never in the corpus) for babble noise
CLIP_SECONDS = 6.0
SESSIONS = 4  # per speaker (VoxCeleb1: ~18 videos per speaker)
CHANNEL_ROOMS = 24


def base_voices(seed: int) -> list[str]:
    """A fixed set of accent+variant voices; every speaker is built on one of them."""
    rng = np.random.default_rng([seed, 7])
    pairs = [f"{a}+{v}" for a in _ACCENTS for v in _VARIANTS]
    return [pairs[i] for i in rng.choice(len(pairs), N_BASE_VOICES, replace=False)]


def speaker_profile(index: int, seed: int) -> dict[str, Any]:
    """Fixed voice parameters of speaker ``index`` (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 1, index])
    voices = base_voices(seed)
    return {
        "spk": f"spk{index:04d}",
        "voice": voices[index % len(voices)],
        "pitch": int(rng.integers(20, 81)),
        "range": int(rng.integers(20, 81)),
        "rate": int(rng.integers(135, 206)),
        "alpha": float(rng.uniform(0.86, 1.16)),
    }


def synth_utterance(profile: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """2-3 pool sentences spoken by ``profile`` with per-utterance jitter, 16 kHz float32."""
    from speakertune.data.espeak import Espeak

    tts = Espeak.get()
    k = int(rng.integers(2, 4))
    text = " ".join(SENTENCES[i] for i in rng.choice(len(SENTENCES), k, replace=False))
    wave = tts.synth(
        text,
        profile["voice"],
        pitch=int(np.clip(profile["pitch"] + rng.integers(-3, 4), 0, 100)),
        range=int(np.clip(profile["range"] + rng.integers(-4, 5), 0, 100)),
        rate=int(profile["rate"] * rng.uniform(0.95, 1.05)),
    )
    # Vocal-tract-length trick: resample by 1/alpha, then play at 16 kHz, so every frequency
    # (formants and pitch) is scaled by alpha. Rates in units of 50 Hz keep the filter short.
    alpha = profile["alpha"] * rng.uniform(0.99, 1.01)
    unit = 50 if tts.sample_rate % 50 == 0 else 1
    out = resample_poly(wave, round(SAMPLE_RATE / unit / alpha), tts.sample_rate // unit)
    out = out / (np.abs(out).max() + 1e-9) * rng.uniform(0.3, 0.9)
    out += rng.standard_normal(len(out)) * 1e-4  # a faint noise floor: no exact digital zeros
    return out.astype(np.float32)


def _speaker_job(args: tuple[int, int, int, int, str, str]) -> list[dict[str, Any]]:
    index, utts, sessions, seed, root, subdir = args
    profile = speaker_profile(index, seed)
    rooms = sorted((Path(root) / "channels").glob("room_*.flac"))
    rows = []
    for u in range(utts):
        session = u * sessions // utts  # contiguous blocks: utterances of one "video"
        channel = draw_channel(np.random.default_rng([seed, 5, index, session]), len(rooms))
        rng = np.random.default_rng([seed, 2, index, u])
        clean = synth_utterance(session_voice(profile, seed, index, session), rng)
        rir = sf.read(rooms[channel.room], dtype="float32")[0] if channel.room is not None else None
        noise = _noise(channel.noise, len(clean), np.random.default_rng([seed, 6, index, u]))
        wave = apply_channel(clean, channel, rir, noise, SAMPLE_RATE)
        utt = f"{profile['spk']}-u{u:03d}"
        path = Path(root) / subdir / profile["spk"] / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append({"utt": utt, "spk": profile["spk"], "uri": str(path),
                     "duration_s": len(wave) / SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
                     "voice": profile["voice"], "session": f"{profile['spk']}-s{session}",
                     "channel": channel.describe()})  # fmt: skip
    return rows


def session_voice(profile: dict[str, Any], seed: int, index: int, session: int) -> dict:
    """The speaker on that day: pitch, range and rate shift a little between sessions."""
    rng = np.random.default_rng([seed, 7, index, session])
    return {**profile, "pitch": int(np.clip(profile["pitch"] + rng.integers(-10, 11), 0, 100)),
            "range": int(np.clip(profile["range"] + rng.integers(-10, 11), 0, 100)),
            "rate": int(profile["rate"] * rng.uniform(0.85, 1.15)),
            "alpha": profile["alpha"] * float(rng.uniform(0.97, 1.03))}


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    return harmonic_music(n, rng) if kind == "music" else colored_noise(kind, n, rng)


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise, unit RMS, by spectral shaping."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spec *= {"white": 1.0, "pink": f**-0.5, "brown": f**-1.0}[kind]
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


def harmonic_music(n: int, rng: np.random.Generator) -> np.ndarray:
    """A 'music' clip: a sequence of chords, each a sum of decaying harmonic tones."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    note_len = int(rng.uniform(0.25, 0.6) * SAMPLE_RATE)
    for start in range(0, n, note_len):
        seg = t[: min(note_len, n - start)]
        env = np.exp(-seg * rng.uniform(2, 6))
        root_midi = rng.integers(45, 70)
        for semis in rng.choice([0, 3, 4, 7, 12], size=int(rng.integers(1, 4)), replace=False):
            f0 = 440.0 * 2 ** ((root_midi + semis - 69) / 12)
            for h in range(1, 7):
                if f0 * h < SAMPLE_RATE / 2:
                    out[start : start + len(seg)] += env * np.sin(2 * np.pi * f0 * h * seg) / h
    return out / np.sqrt(np.mean(out**2) + 1e-12)


def _noise_job(args: tuple[int, str, int, str]) -> dict[str, Any]:
    i, kind, seed, root = args
    rng = np.random.default_rng([seed, 3, i])
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    if kind == "music":
        x, category = harmonic_music(n, rng), "music"
    elif kind == "babble":  # 3-6 held-out talkers at random offsets
        x, category = np.zeros(n), "speech"
        for talker in rng.choice(BABBLE_SPEAKERS, size=int(rng.integers(3, 7)), replace=False):
            profile = speaker_profile(100_000 + int(talker), seed)  # far outside corpus ids
            y = synth_utterance(profile, rng)
            y = np.resize(y, n) if len(y) < n else y[:n]
            x += np.roll(y, int(rng.integers(n))) / (np.sqrt(np.mean(y**2)) + 1e-9)
        x /= np.sqrt(np.mean(x**2)) + 1e-12
    else:
        x, category = colored_noise(kind, n, rng), "noise"
    x = 0.1 * x / max(1.0, np.abs(0.1 * x).max() / 0.99)
    name = f"{kind}_{i:02d}"
    path = Path(root) / "noise" / f"{name}.flac"
    sf.write(path, x.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {"utt": name, "spk": category, "uri": str(path), "duration_s": CLIP_SECONDS,
            "sample_rate": SAMPLE_RATE, "category": category, "kind": kind}  # fmt: skip


def simulate_rir(rt60: float, rng: np.random.Generator) -> tuple[np.ndarray, float, list]:
    """Shoebox image-method RIR for a target RT60; returns (rir, measured RT60, room dims).
    Sabine's formula underestimates the image method's decay time, so the first pass aims
    low and, when the measured RT60 is off by more than 10 %, one corrective pass is made."""
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 3.0, 2.4], [9.0, 7.0, 3.6])
    src, mic = dims * rng.uniform(0.15, 0.85, 3), dims * rng.uniform(0.15, 0.85, 3)

    def run(target: float) -> tuple[np.ndarray, float]:
        absorption, order = pra.inverse_sabine(target, dims)
        room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                           max_order=order)  # fmt: skip
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        return np.asarray(room.rir[0][0]), float(room.measure_rt60()[0][0])

    guess = 0.75 * rt60  # the image method decays ~1/0.75 slower than Sabine predicts
    h, measured = run(guess)
    if abs(measured - rt60) > 0.1 * rt60:
        h, measured = run(guess * rt60 / measured)
    return h / np.abs(h).max(), measured, dims.round(2).tolist()


def _rir_job(args: tuple[int, int, str, str]) -> dict[str, Any]:
    i, seed, root, subdir = args
    stream = 4 if subdir == "rir" else 8  # the channel rooms are other rooms than the bank's
    rng = np.random.default_rng([seed, stream, i])
    rt60 = float(rng.uniform(0.2, 0.8))
    h, measured, dims = simulate_rir(rt60, rng)
    name = f"{'rir' if subdir == 'rir' else 'room'}_{i:03d}"
    path = Path(root) / subdir / f"{name}.flac"
    sf.write(path, h.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_24")
    return {"utt": name, "spk": "room", "uri": str(path), "duration_s": len(h) / SAMPLE_RATE,
            "sample_rate": SAMPLE_RATE, "rt60": rt60, "rt60_measured": measured,
            "room": "x".join(str(d) for d in dims)}  # fmt: skip


def _stderr_progress(msg: str) -> None:
    print(f"[synthetic] {msg}", file=sys.stderr, flush=True)


def ensure_synthetic_corpus(
    root: str | Path,
    speakers: int = 100,
    utts: int = 20,
    seed: int = 0,
    *,
    rirs: int | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = _stderr_progress,
) -> Path:
    """Build the corpus under ``root`` unless a complete one with the same parameters is
    there already (cached); safe when several processes call it at once (file lock).
    ``rirs`` defaults to ``default_rirs(speakers)`` (20 for the default 100 speakers)."""
    if speakers < 4 or utts < 2:
        raise DataError(f"synthetic corpus: need speakers >= 4, utts >= 2; got {speakers}x{utts}")
    rirs = default_rirs(speakers) if rirs is None else rirs
    params = {"speakers": speakers, "utts": utts, "sessions": min(SESSIONS, utts), "seed": seed,
              "rirs": rirs, "version": VERSION}  # fmt: skip
    return _ensure(Path(root).absolute(), params, workers, progress or (lambda _m: None))


def ensure_builtin_banks(root: str | Path, seed: int = 0, rirs: int = 20) -> Path:
    """Only the noise and RIR banks of the built-in corpus (``root/noise``, ``root/rir``), for
    augmenting any corpus; cached like the corpus."""
    params = {"banks_only": True, "seed": seed, "rirs": rirs, "version": VERSION}
    return _ensure(Path(root).expanduser().absolute(), params, None, _stderr_progress)


def _ensure(root: Path, params: dict[str, Any], workers: int | None,
            progress: Callable[[str], None]) -> Path:
    marker = root / ".complete.json"
    if _complete(marker, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; then reuse it
        if not _complete(marker, params):
            _build(root, params, workers, progress)
    return root


def _complete(marker: Path, params: dict[str, Any]) -> bool:
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _build(
    root: Path, params: dict[str, Any], workers: int | None, progress: Callable[[str], None]
) -> None:
    if root.exists():
        if any(root.iterdir()) and not (root / ".synthetic").exists():
            raise DataError(f"{root}: exists and is not a synthetic corpus; refusing to overwrite")
        shutil.rmtree(root)
    for sub in ("wav", "noise", "rir", "channels"):
        (root / sub).mkdir(parents=True)
    (root / ".synthetic").write_text("built by speakertune.data.synthetic\n")
    t0 = time.perf_counter()
    n_spk = params.get("speakers", 0)
    if workers is None:  # small corpora: starting worker processes costs more than it saves
        small = n_spk * params.get("utts", 0) <= 400
        workers = 1 if small else min(len(os.sched_getaffinity(0)), 8)
    # spawn, not fork: callers may hold threads (Ray, torch) that fork would copy half-locked.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
    pmap = pool.map if pool else map
    try:
        _build_banks(root, params, pmap, progress)
        if n_spk:
            _build_speakers(root, params, pmap, progress, t0)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    (root / ".complete.json").write_text(json.dumps(params))  # last: marks the corpus usable
    progress(f"done in {time.perf_counter() - t0:.1f}s")


def _build_banks(root: Path, params: dict[str, Any], pmap: Callable, progress: Callable) -> None:
    seed = params["seed"]
    progress(f"noise and RIR banks under {root}")
    kinds = ["white", "pink", "brown"] * 2 + ["music"] * 4 + ["babble"] * 6
    noise_rows = pmap(_noise_job, [(i, k, seed, str(root)) for i, k in enumerate(kinds)])
    rir_rows = pmap(_rir_job, [(i, seed, str(root), "rir") for i in range(params["rirs"])])
    rooms = channel_rooms(params.get("speakers", 0))
    list(pmap(_rir_job, [(i, seed, str(root), "channels") for i in range(rooms)]))
    write_manifest(pd.DataFrame(list(noise_rows)), root / "noise" / "manifest.parquet")
    write_manifest(pd.DataFrame(list(rir_rows)), root / "rir" / "manifest.parquet")


def _build_speakers(root: Path, params: dict[str, Any], pmap: Callable, progress: Callable,
                    t0: float) -> None:
    seed, n_spk, n_utt = params["seed"], params["speakers"], params["utts"]
    progress(f"building {n_spk} speakers x {n_utt} utterances in {params['sessions']} "
             f"sessions under {root}")
    rows: list[dict[str, Any]] = []
    jobs = [(i, n_utt, params["sessions"], seed, str(root), "wav") for i in range(n_spk)]
    for done, spk_rows in enumerate(pmap(_speaker_job, jobs), start=1):
        rows.extend(spk_rows)
        if done % max(1, n_spk // 10) == 0 or done == n_spk:
            progress(f"{done}/{n_spk} speakers ({time.perf_counter() - t0:.1f}s)")
    df = pd.DataFrame(rows)
    write_manifest(df, root / "manifest.parquet")
    pd.DataFrame([speaker_profile(i, seed) for i in range(n_spk)]).to_csv(
        root / "speakers.csv", index=False
    )
    _, val = split_by_speaker(df, default_val_speakers(n_spk), seed)
    trials = make_trials(val, 2000, seed)
    write_trials(trials, root / "trials.txt")
    write_summary(df, trials, root, "Synthetic corpus")


def channel_rooms(speakers: int) -> int:
    """Rooms the sessions are recorded in: shared between speakers, 24 for the default corpus."""
    return 0 if speakers == 0 else max(4, min(CHANNEL_ROOMS, speakers // 4))


def default_rirs(speakers: int) -> int:
    """Size of the RIR bank: 20 for the default corpus, fewer for tiny test corpora."""
    return max(4, min(20, speakers // 5))


def default_val_speakers(speakers: int) -> int:
    """Validation speakers used for the corpus's own ``trials.txt`` (20 for 100 speakers)."""
    return max(2, min(20, speakers // 5))
