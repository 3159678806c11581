"""What every scoring backend provides, and the state conversion they share."""

from __future__ import annotations

from typing import Any

import numpy as np


class BackendError(ValueError):
    """A backend was used wrongly (not fitted, wrong dimension, bad state)."""


def as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise BackendError(f"{name}: expected [n, D] embeddings, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise BackendError(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise BackendError(f"{name}: embeddings contain NaN/inf")
    return x


_CHUNK = 65536  # trials per block: bounded memory for millions of trials


def chunked(ia: np.ndarray, ib: np.ndarray, fn) -> np.ndarray:
    """``fn(ia[block], ib[block])`` over blocks of trials, concatenated."""
    out = np.empty(len(ia))
    for start in range(0, out.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        out[sl] = fn(ia[sl], ib[sl])
    return out


def length_norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def scalar(state: dict[str, Any], key: str) -> Any:
    """Read a plain scalar back from a state that went through np.savez/np.load."""
    if key not in state:
        raise BackendError(f"backend state has no field {key!r}")
    value = state[key]
    return value.item() if isinstance(value, np.ndarray) else value


class Backend:
    """Scoring happens in a transformed space so that enrollment averaging, score matrices
    and AS-norm cohorts share one preprocessing: ``score = score_pairs(T(e), T(t))``."""

    name = "base"

    def fit(self, emb: np.ndarray, spk: np.ndarray) -> Backend:  # pragma: no cover
        raise NotImplementedError

    def transform(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def combine(self, rows: np.ndarray) -> np.ndarray:
        """One enrollment vector from several transformed utterances (their average)."""
        return rows.mean(axis=0)

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Row i of ``a`` against row i of ``b`` (both already transformed)."""
        raise NotImplementedError

    def score_indexed(
        self, a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray
    ) -> np.ndarray:
        """``score_pairs(a[ia], b[ib])``; backends may precompute per-row terms once."""
        return chunked(ia, ib, lambda i, j: self.score_pairs(a[i], b[j]))

    def score_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Every row of ``a`` against every row of ``b`` (both already transformed)."""
        raise NotImplementedError

    def score(self, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
        enroll, test = self.transform(enroll), self.transform(test)
        if enroll.shape[0] != test.shape[0]:
            raise BackendError(f"score: {enroll.shape[0]} enroll rows vs {test.shape[0]} test")
        return self.score_pairs(enroll, test)

    def to_state(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Backend:  # pragma: no cover
        raise NotImplementedError
