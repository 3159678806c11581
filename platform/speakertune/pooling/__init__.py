"""Poolings [B, C, T] -> [B, out_dim]; importing this package registers them all."""

from speakertune.pooling import (  # noqa: F401  (imported to register the poolings)
    attentive_stats,
    ghostvlad,
    self_attentive,
    stats,
)
