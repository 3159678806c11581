"""Speaker diarization: VAD -> sliding-window embeddings -> affinity -> clustering (AHC or
spectral, ``clustering.py``) -> RTTM turns.

The recording's features are computed once; each window is a slice of them, re-centred so that
it looks like the per-utterance mean-normalised input the encoder was trained on. Windows are
embedded whole through ``scoring.embed.encode_segments`` (the shared encoder batching: equal
lengths only, no cropping), so diarization has no cropping rule of its own.
Every speech frame is then given the label of the window whose centre is nearest, so no speech
is dropped even where a speech region is shorter than a window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from speakertune.diarization.rttm import Turn
from speakertune.registry import CLUSTERINGS
from speakertune.scoring.backends import CosineBackend


class DiarizationError(ValueError):
    """Bad diarization input or settings; the message names the file or field."""


@dataclass
class DiarizeConfig:
    window_s: float = 1.5
    hop_s: float = 0.75
    min_window_s: float = 0.4  # speech regions shorter than this get no window of their own
    # Energy VAD: a frame is speech when within `vad_db` dB of the loud (95th pct) frames.
    vad_db: float = 30.0
    min_speech_s: float = 0.2
    min_gap_s: float = 0.3
    # cosine | plda (the checkpoint's fitted PLDA) | None: the backend the checkpoint was
    # ranked on (see diarize_checkpoint); diarize() alone reads None as "the backend object
    # passed, else cosine".
    backend: str | None = None
    method: str = "ahc"  # or "spectral" (clustering.py)
    linkage: str = "average"  # ahc's
    # spectral: links per window in the k-NN graph; 0: chosen on dev meetings by diarize_files
    # (window_calibration.py), else clustering.NEIGHBOURS
    neighbours: int = 0
    reassign: int = 3  # passes moving windows to the cluster most similar on average (#27)
    # Subtract the recording's mean window embedding before scoring (#27: by measurement)
    centre: bool = False
    # ahc: stop merging below this affinity; spectral: merge the eigengap's clusters above it
    threshold: float | None = None
    num_speakers: int | None = None  # ... or cluster into exactly this many speakers
    # neither: ahc stops where the checkpoint's calibrated LLR is 0 (diarize_files), spectral
    # counts by the eigengap; the count found is kept within these bounds
    min_speakers: int = 1
    max_speakers: int | None = None
    batch_size: int = 64
    # A cluster with less speech than this is noise, not a speaker: its windows join the
    # nearest larger cluster (AHC's outlier clusters otherwise take a speaker's place)
    min_cluster_s: float = 2.0
    # A longer recording is diarized in its first max_seconds (a warning says so): 1 h of
    # 16 kHz is 230 MB of samples and 360k feature frames.
    max_seconds: float = 3600.0

    @property
    def min_cluster_windows(self) -> int:
        """``min_cluster_s`` as a count of windows (one new window per hop)."""
        return max(1, round(self.min_cluster_s / self.hop_s))

    def validate(self) -> DiarizeConfig:
        if self.window_s <= 0 or self.hop_s <= 0:
            raise DiarizationError(f"window_s/hop_s must be > 0, got {self.window_s}/{self.hop_s}")
        if self.hop_s > self.window_s:
            raise DiarizationError(f"hop_s ({self.hop_s}) must not exceed window_s")
        if self.threshold is not None and self.num_speakers is not None:
            raise DiarizationError("set at most one of threshold and num_speakers")
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DiarizationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_speakers is not None and self.max_speakers < self.min_speakers:
            raise DiarizationError(f"max_speakers ({self.max_speakers}) < min_speakers "
                                   f"({self.min_speakers})")
        if self.method not in CLUSTERINGS:
            raise DiarizationError(f"method must be one of {', '.join(CLUSTERINGS.names())}, "
                                   f"got {self.method!r}")
        if self.backend not in (None, "cosine", "plda"):
            raise DiarizationError(f"backend must be cosine, plda or None, got {self.backend!r}")
        return self


@dataclass
class Diarization:
    turns: list[Turn]
    speech: list[tuple[float, float]]
    windows: np.ndarray  # [n, 2] start/end seconds
    labels: np.ndarray  # [n] cluster per window
    embeddings: np.ndarray  # [n, D]
    info: dict[str, Any] = field(default_factory=dict)


def energy_vad(
    wave: np.ndarray, sample_rate: int, *, rel_db: float = 30.0, frame_s: float = 0.01,
    min_speech_s: float = 0.2, min_gap_s: float = 0.3,
) -> list[tuple[float, float]]:
    """Speech regions (seconds) from frame log-energy, with short gaps/blips smoothed out."""
    hop = max(1, int(round(frame_s * sample_rate)))
    n = len(wave) // hop
    if n == 0:
        return []
    frames = np.asarray(wave[: n * hop], dtype=np.float64).reshape(n, hop)
    energy = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    speech = energy > np.percentile(energy, 95) - rel_db
    gap, blip = int(round(min_gap_s / frame_s)), int(round(min_speech_s / frame_s))
    if gap > 0:  # pad so that closing does not eat speech at the edges
        padded = np.pad(speech, gap, mode="edge")
        speech = ndimage.binary_closing(padded, np.ones(gap, dtype=bool))[gap:-gap]
    if blip > 0:
        speech = ndimage.binary_opening(speech, np.ones(blip, dtype=bool))
    labelled, count = ndimage.label(speech)
    regions = ndimage.find_objects(labelled)
    return [(r[0].start * frame_s, r[0].stop * frame_s) for r in regions[:count]]


def sliding_windows(
    speech: list[tuple[float, float]], window_s: float, hop_s: float, min_window_s: float = 0.0
) -> np.ndarray:
    """[n, 2] windows inside each speech region; the last one is aligned to the region end."""
    out = []
    for start, end in speech:
        length = end - start
        if length < min_window_s:
            continue
        if length <= window_s:
            out.append((start, end))
            continue
        offsets = np.arange(0.0, length - window_s + 1e-9, hop_s)
        out.extend((start + o, start + o + window_s) for o in offsets)
        if offsets[-1] + window_s < length - 1e-6:
            out.append((end - window_s, end))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def feature_fn(cfg: dict[str, Any]) -> tuple[Callable[[np.ndarray, int], torch.Tensor], float]:
    """(wave, sr) -> [frames, dims] evaluation features, and the frame shift in seconds.

    Only the feature extractor, not the whole evaluation front end: a VAD trim there would
    shift frames against the recording's clock.
    """
    from speakertune.frontend.features import build_feature

    fcfg = dict(cfg.get("features") or {"name": "fbank"})
    extract = build_feature(fcfg)
    shift = float(fcfg.get("frame_shift", 10.0)) / 1000.0
    return (lambda w, sr: extract(torch.as_tensor(w, dtype=torch.float32), sr)), shift


@torch.no_grad()
def embed_windows(
    encoder: torch.nn.Module, feats: torch.Tensor, windows: np.ndarray, frame_shift: float,
    *, batch_size: int = 64, cmn: bool = True,
) -> np.ndarray:
    """Embed each [start, end) window (seconds) of the recording's features [T, F] -> [n, D].

    Example: ``embed_windows(enc, feats [6000, 80], [[0.0, 1.5], [0.75, 2.25]], 0.01)`` ->
    ndarray [2, D].
    """
    from speakertune.scoring.embed import encode_segments

    device = next(encoder.parameters()).device
    bounds = np.rint(np.asarray(windows) / frame_shift).astype(int)
    starts = np.clip(bounds[:, 0], 0, len(feats) - 1)
    idx = [(a, int(min(max(b, a + 1), len(feats)))) for a, b in zip(starts, bounds[:, 1])]
    segs = [feats[a:b] for a, b in idx]
    if cmn:
        segs = [x - x.mean(dim=0, keepdim=True) for x in segs]
    return encode_segments(encoder, segs, batch_size=batch_size, device=device)


def affinity_matrix(emb: np.ndarray, backend: Any | None = None) -> np.ndarray:
    """Symmetric [n, n] similarity of window embeddings [n, D], scored by ``backend`` exactly
    as verification scores a pair (its ``transform`` then ``score_matrix``: the checkpoint's
    cosine with its training mean removed, or its PLDA LLR); ``None``: raw cosine."""
    backend = backend if backend is not None else CosineBackend(mean_norm=False)
    x = backend.transform(np.asarray(emb, dtype=np.float64))
    aff = np.asarray(backend.score_matrix(x, x), dtype=float)
    aff = (aff + aff.T) / 2
    if len(aff) > 1:  # a window against itself says nothing; keep it the most similar pair
        np.fill_diagonal(aff, aff.max())
    return aff


def frames_to_turns(
    speech: list[tuple[float, float]], windows: np.ndarray, labels: np.ndarray, file_id: str,
    step: float = 0.01,
) -> list[Turn]:
    """Label every speech frame by the nearest window centre, then merge runs into turns."""
    if len(windows) == 0:
        return []
    centres = windows.mean(axis=1)
    order = np.argsort(centres)
    centres, labels = centres[order], labels[order]
    turns: list[Turn] = []
    for start, end in speech:
        t = np.arange(start, end, step) + step / 2
        if len(t) == 0:
            continue
        pos = np.clip(np.searchsorted(centres, t), 1, len(centres) - 1) if len(centres) > 1 else 0
        if len(centres) > 1:
            left_closer = (t - centres[pos - 1]) <= (centres[pos] - t)
            pos = np.where(left_closer, pos - 1, pos)
        lab = np.broadcast_to(labels[pos], t.shape)
        cuts = np.flatnonzero(np.diff(lab)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(t)]):
            s, e = start + a * step, min(start + b * step, end)
            turns.append(Turn(file_id, round(s, 3), round(e - s, 3), f"spk{int(lab[a])}"))
    return turns


def embed_recording(
    wave: np.ndarray, sample_rate: int, encoder: torch.nn.Module, cfg: dict[str, Any],
    dcfg: DiarizeConfig, file_id: str = "rec",
) -> Diarization:
    """VAD, windows and window embeddings of one recording: a ``Diarization`` without labels
    or turns yet (``label_windows`` adds them).

    Example: ``embed_recording(wave [n], 16000, enc, cfg, DiarizeConfig()).embeddings`` ->
    ndarray [windows, D].
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise DiarizationError(f"{file_id}: expected a non-empty mono waveform, got {wave.shape}")
    speech = energy_vad(wave, sample_rate, rel_db=dcfg.vad_db, min_speech_s=dcfg.min_speech_s,
                        min_gap_s=dcfg.min_gap_s)
    windows = sliding_windows(speech, dcfg.window_s, dcfg.hop_s, dcfg.min_window_s)
    info: dict[str, Any] = {"speech_s": float(sum(e - s for s, e in speech)),
                            "windows": len(windows), "file": file_id}
    if len(windows) == 0:
        return Diarization([], speech, windows, np.zeros(0, int), np.zeros((0, 0)), info)
    extract, shift = feature_fn(cfg)
    feats = extract(wave, sample_rate).float()
    fcfg = cfg.get("features") or {}
    cmn = bool(fcfg.get("cmn", True)) and fcfg.get("name") != "waveform"  # samples: no CMN
    emb = embed_windows(encoder, feats, windows, shift, batch_size=dcfg.batch_size, cmn=cmn)
    return Diarization([], speech, windows, np.zeros(len(windows), int), emb, info)


def label_windows(
    embedded: Diarization, dcfg: DiarizeConfig, backend: Any | None = None,
) -> Diarization:
    """Score the windows' embeddings pairwise with ``backend`` (None: raw cosine), cluster
    them by ``dcfg.method`` and turn the labels into RTTM turns.

    Example: ``label_windows(embed_recording(...), DiarizeConfig(method="spectral")).turns``.
    """
    info = embedded.info | {"method": dcfg.method}
    emb = embedded.embeddings
    if len(emb) == 0:
        return dataclasses.replace(embedded, info=info | {"clusters": 0})
    scored = emb - emb.mean(axis=0, keepdims=True) if dcfg.centre else emb
    labels = CLUSTERINGS.get(dcfg.method)(
        affinity_matrix(scored, backend), threshold=dcfg.threshold,
        num_speakers=dcfg.num_speakers, linkage_method=dcfg.linkage, neighbours=dcfg.neighbours,
        reassign=dcfg.reassign,
        bounds=(dcfg.min_speakers, dcfg.max_speakers),
        min_size=dcfg.min_cluster_windows)
    turns = frames_to_turns(embedded.speech, embedded.windows, labels, info["file"])
    return dataclasses.replace(embedded, turns=turns, labels=labels,
                               info=info | {"clusters": int(labels.max()) + 1})


def diarize(
    wave: np.ndarray, sample_rate: int, encoder: torch.nn.Module, cfg: dict[str, Any],
    dcfg: DiarizeConfig, *, file_id: str = "rec", backend: Any | None = None,
) -> Diarization:
    """Diarize one recording with a trained encoder (and optionally a fitted PLDA backend);
    ``result.info["backend"]`` names the affinity used. From a checkpoint, prefer
    ``diarize_checkpoint``, which picks the checkpoint's ranked backend by default.

    Example: ``diarize(wave [n], 16000, enc, cfg, DiarizeConfig(num_speakers=2)).turns``.
    """
    dcfg.validate()
    if dcfg.method == "ahc" and dcfg.threshold is None and dcfg.num_speakers is None:
        raise DiarizationError("ahc needs threshold or num_speakers (diarize_files and the "
                               "diarize command take the threshold from the checkpoint's "
                               "calibration)")
    name = dcfg.backend or (getattr(backend, "name", None) if backend is not None else "cosine")
    if name != "cosine" and backend is None:
        raise DiarizationError(f"backend {name!r} needs a fitted backend object")
    embedded = embed_recording(wave, sample_rate, encoder, cfg, dcfg, file_id)
    out = label_windows(embedded, dcfg,
                        backend if getattr(backend, "name", name) == name else None)
    out.info["backend"] = name
    return out


def checkpoint_affinity(ckpt: Any, name: str | None) -> tuple[str, Any | None, str]:
    """``(backend name, the checkpoint's fitted backend for diarize(), why)``: verification's
    own scoring (cosine with the training mean removed, or PLDA); None only for a checkpoint
    without a fitted cosine (raw cosine then).
    ``name=None``: the backend the checkpoint was ranked on; cosine if that one was not saved.

    Example: ``checkpoint_affinity(load_checkpoint("ckpt"), None)`` ->
    ``("plda", PLDABackend, "the backend this checkpoint was ranked on (...)")``.
    """
    why = "as asked"
    if name is None:
        name, why = ckpt.ranked_backend()
        if name != "cosine" and name not in ckpt.backends:
            return "cosine", None, f"ranked backend {name} is not saved in the checkpoint"
    if name == "cosine" and name not in ckpt.backends:  # an old checkpoint: raw cosine
        return "cosine", None, f"{why}; no fitted cosine saved, so raw cosine"
    if name not in ckpt.backends:
        raise DiarizationError(f"backend {name!r}: the checkpoint holds no fitted {name}")
    return name, ckpt.backends[name], why


def diarize_checkpoint(
    wave: np.ndarray, sample_rate: int, ckpt: Any, dcfg: DiarizeConfig, *,
    file_id: str = "rec", verbose: bool = True,
) -> Diarization:
    """``diarize`` with a loaded checkpoint; ``dcfg.backend=None`` uses the backend the
    checkpoint was ranked on. The choice is in ``result.info`` and printed (stderr) when
    ``verbose``.

    Example: ``diarize_checkpoint(wave [n], 16000, load_checkpoint("ckpt"),
    DiarizeConfig(num_speakers=2)).info["backend"]`` -> ``"plda"``.
    """
    import sys
    from dataclasses import replace

    name, fitted, why = checkpoint_affinity(ckpt, dcfg.backend)
    out = diarize(wave, sample_rate, ckpt.encoder, ckpt.cfg, replace(dcfg, backend=name),
                  file_id=file_id, backend=fitted)
    out.info["backend_reason"] = why
    if verbose:
        print(f"diarize {file_id}: backend {name} ({why})", file=sys.stderr, flush=True)
    return out
