"""``speakertune explain``: maps for each utterance of a list with a saved checkpoint, their
overlays and arrays, and a summary with a deletion check per map."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from speakertune.checkpoint import LoadedCheckpoint, load_checkpoint
from speakertune.data.audio import decode_cap, load_audio
from speakertune.data.audio_files import AudioFiles
from speakertune.data.errors import AudioError
from speakertune.data.storage import write_text
from speakertune.explain.maps import (
    METHODS,
    ExplainError,
    class_target,
    classifier_from_state,
    deletion_drop,
    explain,
    find_layer,
    save_maps,
    similarity_target,
    top_fraction_mask,
)
from speakertune.frontend.features import FeatureError
from speakertune.frontend.pipeline import extract_features


def _say(line: str) -> None:
    print(line, flush=True)


def _features_of(ckpt: LoadedCheckpoint) -> Callable[[str], torch.Tensor]:
    """uri -> ``[1, frames, dims]`` features with the checkpoint's evaluation front end."""
    data = ckpt.cfg.get("data", {})
    sr = int(data.get("sample_rate", 16000))
    storage = data.get("storage") or None
    cfg = {**ckpt.cfg, "data": {**data, "sample_rate": sr}}
    return lambda uri: torch.as_tensor(
        extract_features(load_audio(uri, sr, storage, max_seconds=decode_cap(cfg)), cfg,
                         str(uri)))[None]


def _classifier(ckpt: LoadedCheckpoint, enroll: str | None) -> tuple[Any, Any]:
    """``(weight, bias)`` of the checkpoint's classifier head; (None, None) without one when
    there is an enrollment target to explain instead (end-to-end losses have no head)."""
    try:
        return classifier_from_state(ckpt.loss_state, ckpt.num_classes)
    except ExplainError as exc:
        if not enroll:
            raise
        print(f"note: {exc}; explaining enrollment similarity only", file=sys.stderr)
        return None, None


def _targets(emb: torch.Tensor, head: tuple[Any, Any], enroll_emb: torch.Tensor | None,
             stem: str, lines: list[str]) -> dict[str, Any]:
    """The scalar targets of one utterance's embedding ``emb`` [1, D]: its predicted class's
    logit and its cosine to the enrollment; their values are added to ``lines``."""
    weight, bias = head
    targets = {}
    if weight is not None:
        # Cosine heads (no bias) are margin softmaxes: their logits are cosines.
        logits = emb @ weight.T + (bias if bias is not None else 0.0)
        if bias is None:
            logits = F.normalize(emb) @ F.normalize(weight).T
        pred = int(logits.argmax())
        targets["class"] = class_target(weight, pred, bias, cosine=bias is None)
        lines.append(f"{stem}: predicted class {pred} (logit {float(logits[0, pred]):.3f})")
    if enroll_emb is not None:
        targets["enroll"] = similarity_target(enroll_emb)
        sim = float(F.cosine_similarity(emb[0], enroll_emb, dim=0))
        lines.append(f"{stem}: cosine to enrollment {sim:.3f}")
    return targets


def _maps_and_check(enc: torch.nn.Module, x: torch.Tensor, name: str, target: Any,
                    methods: Sequence[str], layer: torch.nn.Module, out: Path, stem: str,
                    rng: np.random.Generator) -> str:
    """Draw and save one target's maps; the deletion check's summary line: masking the
    top 20% bins of a faithful map should hurt the score more than a random 20%."""
    maps = explain(enc, x, target, methods, layer)
    save_maps(maps, x, out, f"{stem}_{name}", title=f"{stem} ({name})")
    rand = np.mean([deletion_drop(enc, x, target, rng.random(x.shape[1:]) < 0.2)
                    for _ in range(4)])
    drops = ", ".join(f"{m} {deletion_drop(enc, x, target, top_fraction_mask(v, 0.2)):.3f}"
                      for m, v in maps.items())
    return f"{stem} ({name}) score drop, top-20% bins masked: {drops}; random 20%: {rand:.3f}"


def explain_files(
    checkpoint: str | Path, audio: Sequence[str], out_dir: str | Path, *,
    enroll: str | None = None, methods: Sequence[str] = METHODS, layer: str | None = None,
    log: Callable[[str], None] = _say,
) -> list[str]:
    """Maps for each utterance of ``audio`` with a saved checkpoint: ``<stem>_class_<method>``
    (the predicted speaker's logit, when the checkpoint has a classifier head) and, with
    ``enroll``, ``<stem>_enroll_<method>`` (cosine similarity to the enrollment embedding), as
    ``.png`` overlays and raw ``.npy`` [frames, feature bins] arrays, plus ``summary.txt`` (the
    scores and a deletion check per map). Unreadable utterances are skipped and listed; none
    readable is an error. Returns the summary lines."""
    out = Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    if getattr(getattr(ckpt.encoder, "frame_level", None), "wants_waveform", False):
        raise ExplainError(f"model {ckpt.cfg['model']['name']!r} takes raw audio: explanation "
                           "maps are over time x frequency features and do not apply to it")
    enc, feats_of = ckpt.encoder.eval(), _features_of(ckpt)
    head = _classifier(ckpt, enroll)
    enroll_emb = None
    if enroll:
        with torch.no_grad():
            enroll_emb = enc(feats_of(enroll))[0]
    target_layer = find_layer(enc, layer, ckpt.feat_dim)
    layer_name = next(n for n, m in enc.named_modules() if m is target_layer) or "<model>"
    lines = [f"checkpoint {checkpoint}", f"grad-cam layer {layer_name}"]
    rng = np.random.default_rng(0)
    files = AudioFiles(audio, feats_of, errors=(AudioError, FeatureError))
    for i, uri, x in files:
        t0, stem = time.monotonic(), Path(str(uri)).stem
        with torch.no_grad():
            emb = enc(x)
        targets = _targets(emb, head, enroll_emb, stem, lines)
        for name, target in targets.items():
            lines.append(_maps_and_check(enc, x, name, target, methods, target_layer, out,
                                         stem, rng))  # fmt: skip
        log(f"[{i}/{len(files)}] {stem}: {x.shape[1]} frames, "
            f"{len(targets) * len(methods)} maps ({time.monotonic() - t0:.1f}s)")
    if files.skipped:
        lines.append(f"skipped {len(files.skipped)} of {len(files)} utterances: "
                     + "; ".join(files.skipped.values()))
    files.check_any(ExplainError, "utterance")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.txt", "\n".join(lines) + "\n")
    return lines
