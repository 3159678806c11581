"""The front end an exported encoder expects, written as ``frontend.json`` beside the model.

The exported graph starts at features, not at the waveform: the front end stays
``frontend.features`` (``torchaudio.compliance.kaldi``), so a runtime reproduces it from these
parameters (any Kaldi-compatible fbank/MFCC with the same options). The embedding rule of
``scoring.embed`` (whole utterance, chunks of ``chunk_frames`` averaged beyond that) is
recorded too, since embeddings of long utterances depend on it.

Example: ``frontend_spec(cfg, 80)["features"]`` -> ``{"name": "fbank", "num_mel_bins": 80,
"frame_length": 25.0, "frame_shift": 10.0, "dither": 0.0, ...}``.
"""

from __future__ import annotations

from typing import Any

from speakertune.frontend.features import build_feature
from speakertune.scoring.embed import CHUNK_FRAMES


def frontend_spec(cfg: dict[str, Any], feat_dim: int) -> dict[str, Any]:
    """Everything between a waveform and the exported model's ``feats`` input."""
    feature = build_feature(cfg)
    name = cfg["features"]["name"]
    return {
        "in_graph": False,
        "sample_rate": int(cfg["data"]["sample_rate"]),
        "preprocess": cfg.get("preprocess") or {},
        "features": {"name": name, **feature.kwargs},
        "reference": getattr(feature, "reference", f"torchaudio.compliance.kaldi.{name}"),
        "int16_scale": feature.int16_scale,  # waveform in [-1, 1] is multiplied by 32768 first
        "cmn": feature.cmn,  # per-utterance mean over frames subtracted from every frame
        "feat_dim": int(feat_dim),
        "layout": "feats [batch, frames, feat_dim] float32 -> embedding [batch, embed_dim]",
        "embedding_rule": {
            "chunk_frames": CHUNK_FRAMES,
            "text": f"whole utterance; one over {CHUNK_FRAMES} frames is cut into "
                    f"ceil(n / {CHUNK_FRAMES}) evenly spaced {CHUNK_FRAMES}-frame chunks and "
                    "its embedding is their mean (speakertune.scoring.embed.segments)",
        },
    }
