"""Attribution maps (saliency, Grad-CAM, Grad-CAM++, FullGrad) for a checkpoint and utterances.

    python jobs/explain.py --checkpoint runs/x/ckpt --audio utt.wav [--enroll spk.wav] \
        --out runs/explain [--methods saliency gradcam] [--layer frame_level.stages]

For each utterance writes ``<stem>_class_<method>.{png,npy}`` (target: the logit of the
predicted speaker, when the checkpoint has a classifier) and, with ``--enroll``,
``<stem>_enroll_<method>.{png,npy}`` (target: cosine similarity to the enrollment embedding).
The ``.npy`` arrays are the raw [frames, feature bins] maps; ``summary.txt`` lists the scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from speakertune.checkpoint import load_checkpoint
from speakertune.data.audio import load_audio
from speakertune.data.errors import AudioError
from speakertune.explain import (
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--audio", nargs="+", required=True, help="utterances to explain")
    p.add_argument("--enroll", help="enrollment utterance: also explain similarity to it")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--layer", help="dotted module name for Grad-CAM (default: last map "
                                   "before pooling)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    cfg, enc = ckpt.cfg, ckpt.encoder.eval()
    sr = int(cfg.get("data", {}).get("sample_rate", 16000))
    storage = cfg.get("data", {}).get("storage") or None
    cfg = {**cfg, "data": {**cfg.get("data", {}), "sample_rate": sr}}

    def feats_of(uri: str) -> torch.Tensor:
        return torch.as_tensor(extract_features(load_audio(uri, sr, storage), cfg, str(uri)))[None]

    try:  # a classifier head is optional: end-to-end losses have none
        weight, bias = classifier_from_state(ckpt.loss_state, ckpt.num_classes)
    except ExplainError as exc:
        if not args.enroll:
            raise
        print(f"note: {exc}; explaining enrollment similarity only", file=sys.stderr)
        weight = bias = None
    enroll = None
    if args.enroll:
        with torch.no_grad():
            enroll = enc(feats_of(args.enroll))[0]
    layer = find_layer(enc, args.layer, ckpt.feat_dim)
    layer_name = next(n for n, m in enc.named_modules() if m is layer) or "<model>"
    lines = [f"checkpoint {args.checkpoint}", f"grad-cam layer {layer_name}"]
    skipped: dict[str, str] = {}
    rng = np.random.default_rng(0)
    for i, uri in enumerate(args.audio, 1):
        t0 = time.monotonic()
        try:
            x = feats_of(uri)
        except (AudioError, FeatureError) as exc:  # count and report, keep going
            skipped[str(uri)] = str(exc)
            print(f"[{i}/{len(args.audio)}] skipped: {exc}", file=sys.stderr, flush=True)
            continue
        stem = Path(str(uri)).stem
        with torch.no_grad():
            emb = enc(x)
        targets = {}
        if weight is not None:
            # Cosine heads (no bias) are margin softmaxes: their logits are cosines.
            logits = emb @ weight.T + (bias if bias is not None else 0.0)
            if bias is None:
                logits = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(
                    weight).T
            pred = int(logits.argmax())
            targets["class"] = class_target(weight, pred, bias, cosine=bias is None)
            lines.append(f"{stem}: predicted class {pred} (logit {float(logits[0, pred]):.3f})")
        if enroll is not None:
            targets["enroll"] = similarity_target(enroll)
            sim = float(torch.nn.functional.cosine_similarity(emb[0], enroll, dim=0))
            lines.append(f"{stem}: cosine to enrollment {sim:.3f}")
        for name, target in targets.items():
            maps = explain(enc, x, target, args.methods, layer)
            save_maps(maps, x, out, f"{stem}_{name}", title=f"{stem} ({name})")
            # Deletion check: masking the top 20% bins should hurt more than a random 20%.
            rand = np.mean([deletion_drop(enc, x, target, rng.random(x.shape[1:]) < 0.2)
                            for _ in range(4)])
            drops = ", ".join(
                f"{m} {deletion_drop(enc, x, target, top_fraction_mask(v, 0.2)):.3f}"
                for m, v in maps.items())
            lines.append(f"{stem} ({name}) score drop, top-20% bins masked: {drops}; "
                         f"random 20%: {rand:.3f}")
        print(f"[{i}/{len(args.audio)}] {stem}: {x.shape[1]} frames, "
              f"{len(targets) * len(args.methods)} maps ({time.monotonic() - t0:.1f}s)", flush=True)
    if skipped:
        lines.append(f"skipped {len(skipped)} of {len(args.audio)} utterances: "
                     + "; ".join(skipped.values()))
    if len(skipped) == len(args.audio):
        raise ExplainError("no utterance could be read: " + next(iter(skipped.values())))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    print(f"wrote maps to {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as exc:  # project errors are ValueErrors: one line each
        sys.exit(f"error: {exc}")
