"""Built-in test meetings: recordings of held-out speakers with a reference RTTM.

Each meeting has 2-8 speakers taking short, uneven turns (log-normal lengths, 0.6-6 s), cut
from their utterances of every session, so one speaker changes channel (room, noise,
microphone) between turns, as the built-in corpus records them. Turns are separated by pauses
or overlap a little; the speakers' shares of the talk are unequal (Dirichlet weights) but
nobody is silent. Under a quiet noise floor, so pauses are not digital silence.

The reference is each turn's speech (the energy VAD run on the turn alone) at its offset, so
DER measures clustering and the whole-recording VAD, not the turns' own leading silences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from speakertune.data.storage import written_aside
from speakertune.diarization.diarize import energy_vad
from speakertune.diarization.rttm import Turn, write_rttm

MEETING_SPEAKERS = (2, 3, 4, 5, 6, 8)
# Utterances read per talker: a minute of meeting needs a few, and a VoxCeleb2 speaker has
# hundreds (8 talkers x 500 utterances would be thousands of object-store reads and ~2 GB)
MAX_UTTS = 20


@dataclass(frozen=True)
class MeetingPlan:
    seconds: float = 60.0
    turn_median_s: float = 2.0
    turn_s: tuple[float, float] = (0.6, 6.0)
    pause_s: tuple[float, float] = (0.0, 0.8)
    overlap_p: float = 0.1  # share of speaker changes that overlap the previous turn ...
    overlap_s: tuple[float, float] = (0.1, 0.4)  # ... by this much
    balance: float = 4.0  # Dirichlet concentration of the speakers' shares (larger: more equal)
    floor_db: float = -45.0  # noise floor relative to the speech RMS


def build_meeting(
    voices: dict[str, list[np.ndarray]], plan: MeetingPlan, rng: np.random.Generator,
    sample_rate: int, file_id: str,
) -> tuple[np.ndarray, list[Turn]]:
    """One meeting from ``voices`` (speaker -> that speaker's utterances): waveform [n] and
    reference turns (speaker names as given).

    Example: ``build_meeting({"a": [w1, w2], "b": [w3]}, MeetingPlan(20), rng, 16000, "m")``
    -> (ndarray [~320000], [Turn("m", 0.0, 1.9, "a"), ...]).
    """
    names = list(voices)
    weights = rng.dirichlet(np.full(len(names), plan.balance))
    order = list(rng.permutation(len(names)))  # everybody speaks at least once
    pieces: list[tuple[int, int, np.ndarray]] = []  # (speaker, start sample, wave)
    t, last = 0, -1
    while t < plan.seconds * sample_rate or order:
        k = order.pop(0) if order else _next_speaker(weights, last, rng)
        wave = _turn(voices[names[k]], plan, rng, sample_rate)
        if pieces and rng.random() < plan.overlap_p:
            start = max(pieces[-1][1], t - int(rng.uniform(*plan.overlap_s) * sample_rate))
        else:
            start = t + int(rng.uniform(*plan.pause_s) * sample_rate)
        pieces.append((k, start, wave))
        t, last = start + len(wave), k
    out = np.zeros(max(s + len(w) for _, s, w in pieces), np.float32)
    turns = []
    for k, start, wave in pieces:
        out[start:start + len(wave)] += wave
        for a, b in energy_vad(wave, sample_rate):
            turns.append(Turn(file_id, round(start / sample_rate + a, 3), round(b - a, 3),
                              names[k]))
    rms = float(np.sqrt(np.mean(np.concatenate([w for _, _, w in pieces]) ** 2)))
    out += (rms * 10 ** (plan.floor_db / 20) * rng.standard_normal(len(out))).astype(np.float32)
    return out, turns


def _next_speaker(weights: np.ndarray, last: int, rng: np.random.Generator) -> int:
    p = weights.copy()
    if len(p) > 1:
        p[last] = 0.0
    return int(rng.choice(len(p), p=p / p.sum()))


def _turn(utterances: list[np.ndarray], plan: MeetingPlan, rng: np.random.Generator,
          sample_rate: int) -> np.ndarray:
    """A random stretch of one of the speaker's utterances, of a log-normal length."""
    seconds = float(np.clip(plan.turn_median_s * rng.lognormal(0.0, 0.6), *plan.turn_s))
    wave = utterances[int(rng.integers(len(utterances)))]
    n = min(len(wave), int(seconds * sample_rate))
    start = int(rng.integers(0, len(wave) - n + 1))
    return np.asarray(wave[start:start + n], dtype=np.float32)


def _some(uris: list[str], rng: np.random.Generator) -> list[str]:
    if len(uris) <= MAX_UTTS:
        return uris
    return [uris[i] for i in sorted(rng.choice(len(uris), MAX_UTTS, replace=False))]


def write_meetings(
    utts: pd.DataFrame, out_dir: str | Path, read: Callable[[str], np.ndarray], *,
    speakers: Sequence[int] = MEETING_SPEAKERS, plan: MeetingPlan | None = None,
    sample_rate: int = 16000, seed: int = 0, one_session: bool = False,
) -> tuple[list[Path], Path]:
    """Meetings of ``speakers`` talkers each from ``utts`` (columns ``uri``, ``spk``: held-out
    speakers), written as ``meet<k>spk.wav`` plus one ``reference.rttm``; returns both.

    Example: ``write_meetings(corpus.val.utts, "meetings", lambda u: load_audio(u, 16000))``
    -> ([meet2spk.wav, ..., meet8spk.wav], reference.rttm).
    """
    plan = plan or MeetingPlan()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if one_session and "session" in utts:  # each talker keeps one microphone and room
        first = utts.groupby("spk")["session"].transform(
            lambda x: x.iloc[np.random.default_rng([seed, len(x)]).integers(len(x))])
        utts = utts[utts["session"] == first]
    by_spk = utts.groupby("spk")["uri"].apply(list)
    if len(by_spk) < max(speakers):
        raise ValueError(f"meetings of {max(speakers)} speakers need as many held-out "
                         f"speakers; the list has {len(by_spk)}")
    rng = np.random.default_rng(seed)
    wavs, turns = [], []
    for n in speakers:
        chosen = sorted(rng.choice(by_spk.index, n, replace=False))
        voices = {spk: [read(u) for u in _some(by_spk[spk], rng)] for spk in chosen}
        file_id = f"meet{n}spk"
        wave, ref = build_meeting(voices, plan, rng, sample_rate, file_id)
        with written_aside(out / f"{file_id}.wav") as tmp:
            sf.write(tmp, wave, sample_rate, format="WAV")
        wavs.append(out / f"{file_id}.wav")
        turns += ref
    return wavs, write_rttm(turns, out / "reference.rttm")
