"""Cosine scoring, optionally after subtracting the training-embedding mean."""

from __future__ import annotations

from typing import Any

import numpy as np

from speakertune.registry import BACKENDS
from speakertune.scoring.backends.base import Backend, BackendError, as_matrix, length_norm, scalar


@BACKENDS.register("cosine")
class CosineBackend(Backend):
    name = "cosine"

    def __init__(self, mean_norm: bool = True) -> None:
        self.mean_norm = bool(mean_norm)
        self.mean: np.ndarray | None = None

    def fit(self, emb: np.ndarray, spk: np.ndarray | None = None) -> CosineBackend:
        emb = as_matrix(emb, "cosine.fit")
        self.mean = emb.mean(axis=0) if self.mean_norm else np.zeros(emb.shape[1])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = as_matrix(x, "cosine", None if self.mean is None else self.mean.size)
        if self.mean_norm:
            if self.mean is None:
                raise BackendError("cosine backend with mean_norm=True must be fitted first")
            x = x - self.mean
        return length_norm(x)

    def combine(self, rows: np.ndarray) -> np.ndarray:
        # Multi-utterance enrollment: the mean direction, back on the unit sphere.
        return length_norm(rows.mean(axis=0, keepdims=True))[0]

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", a, b)

    def score_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"mean_norm": self.mean_norm}
        if self.mean is not None:
            state["mean"] = self.mean
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CosineBackend:
        self = cls(mean_norm=bool(scalar(state, "mean_norm")))
        if "mean" in state:
            self.mean = np.asarray(state["mean"], dtype=np.float64)
        return self
