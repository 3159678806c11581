"""Embedding latency: the wall time to embed one utterance on one CPU thread.

The ``latency_ms`` search objective (``search.objectives``): a deployment-side cost that the
parameter count only approximates (a ResNet has few parameters and many FLOPs). Measured on a
CPU copy of the encoder, features included (the evaluation front end,
the same as ``frontend.pipeline.extract_features`` with the extractor built once), median of a
few runs after a warm-up.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

LATENCY_SECONDS = 3.0  # utterance length the objective is defined on


def embedding_latency_ms(
    encoder: torch.nn.Module,
    cfg: dict[str, Any],
    *,
    seconds: float = LATENCY_SECONDS,
    repeats: int = 5,
    threads: int = 1,
) -> float:
    """Median milliseconds to embed a ``seconds``-long utterance with ``threads`` CPU threads.

    The caller's encoder (any device, any mode) and torch thread count are left as they were.

    Example: ``embedding_latency_ms(enc, cfg)`` -> e.g. ``12.3`` (fbank [300, F] -> [1, D]).
    """
    from speakertune.frontend.features import build_feature
    from speakertune.frontend.preprocess import Preprocessor

    sr = int(cfg["data"]["sample_rate"])
    feature, preprocess = build_feature(cfg), Preprocessor(cfg.get("preprocess"), sr)
    wave = np.random.default_rng(0).standard_normal(int(seconds * sr)).astype(np.float32) * 0.1
    model = copy.deepcopy(encoder).cpu().eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first run warms up allocators and caches
                t0 = time.perf_counter()
                x = torch.from_numpy(np.ascontiguousarray(preprocess(wave)))
                model(feature(x, sr).unsqueeze(0))
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 1000.0 * statistics.median(times[1:])
