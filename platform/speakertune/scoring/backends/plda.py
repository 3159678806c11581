"""Two-covariance PLDA trained by EM, behind centering -> LDA -> whitening -> length norm.

Model (in the preprocessed space): speaker variable ``y ~ N(mu, B)`` and each embedding
``x = y + e`` with ``e ~ N(0, W)``. Scores are exact log-likelihood ratios of "same speaker"
against "different speakers". State is plain numpy arrays, so it saves with ``np.savez`` and
loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.linalg

from speakertune.registry import BACKENDS
from speakertune.scoring.backends.base import (
    Backend,
    BackendError,
    as_matrix,
    chunked,
    length_norm,
    scalar,
)

log = logging.getLogger(__name__)
_RIDGE = 1e-6  # keeps covariances invertible when a direction carries no variance


def _sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + m.T)


def _class_stats(x: np.ndarray, spk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-speaker counts, sums and the index of each row's speaker."""
    _, idx = np.unique(spk, return_inverse=True)
    counts = np.bincount(idx).astype(np.float64)
    sums = np.zeros((counts.size, x.shape[1]))
    np.add.at(sums, idx, x)
    return counts, sums, idx


def _lda(x: np.ndarray, spk: np.ndarray, dim: int) -> np.ndarray:
    """Projection [D, dim] maximising between- over within-class scatter."""
    counts, sums, idx = _class_stats(x, spk)
    means = sums / counts[:, None]
    within = x - means[idx]
    s_w = within.T @ within / x.shape[0]
    s_b = (means * counts[:, None]).T @ means / x.shape[0]  # x is centred
    # Relative ridge, with an absolute floor for collapsed (all-equal) embeddings.
    scale = max(np.trace(s_w) / s_w.shape[0], np.trace(s_b) / s_b.shape[0], 1e-12)
    s_w += _RIDGE * scale * np.eye(s_w.shape[0])
    vals, vecs = scipy.linalg.eigh(_sym(s_b), _sym(s_w))
    return vecs[:, np.argsort(vals)[::-1][:dim]]


def _whitener(x: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], -1))
    return vecs / np.sqrt(np.maximum(vals, _RIDGE * max(vals.max(), 1e-12)))


def two_covariance_em(
    x: np.ndarray, spk: np.ndarray, iters: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-likelihood ``(mu, B, W)`` of the two-covariance model by EM."""
    n, d = x.shape
    counts, sums, _ = _class_stats(x, spk)
    n_spk = counts.size
    # Initialise from the scatter of class means and within-class scatter.
    means = sums / counts[:, None]
    mu = means.mean(axis=0)
    b = _sym(np.cov(means, rowvar=False, bias=True).reshape(d, d)) + _RIDGE * np.eye(d)
    scatter = x.T @ x
    w = _sym(scatter - (sums / counts[:, None]).T @ sums) / n + _RIDGE * np.eye(d)
    groups = [(c, np.flatnonzero(counts == c)) for c in np.unique(counts)]
    for _ in range(iters):
        b_inv, w_inv = np.linalg.inv(b), np.linalg.inv(w)
        gamma = np.empty_like(sums)
        sum_cov = np.zeros((d, d))  # sum over speakers of posterior covariances
        sum_ncov = np.zeros((d, d))  # the same weighted by utterance count
        prior_term = b_inv @ mu
        for c, rows in groups:  # speakers with equal counts share a posterior covariance
            cov = np.linalg.inv(b_inv + c * w_inv)
            gamma[rows] = (sums[rows] @ w_inv + prior_term) @ cov
            sum_cov += rows.size * cov
            sum_ncov += rows.size * c * cov
        mu = gamma.mean(axis=0)
        gg = gamma.T @ gamma
        b = _sym((gg + sum_cov) / n_spk - np.outer(mu, mu)) + _RIDGE * np.eye(d)
        fg = sums.T @ gamma
        ngg = (gamma * counts[:, None]).T @ gamma
        w = _sym(scatter - fg - fg.T + ngg + sum_ncov) / n + _RIDGE * np.eye(d)
    return mu, b, w


@BACKENDS.register("plda")
class PLDABackend(Backend):
    name = "plda"

    def __init__(
        self,
        lda_dim: int | None = 128,
        whiten: bool = True,
        length_norm: bool = True,
        center: bool = True,
        em_iters: int = 10,
    ) -> None:
        self.lda_dim = None if lda_dim is None else int(lda_dim)
        self.whiten = bool(whiten)
        self.length_norm = bool(length_norm)
        self.center = bool(center)
        self.em_iters = int(em_iters)
        self.mean: np.ndarray | None = None  # centring, in the input space
        self.proj: np.ndarray | None = None  # LDA then whitening, [D, d]
        self.mu = self.between = self.within = None

    # --- preprocessing -------------------------------------------------------------------
    def _preprocess(self, x: np.ndarray) -> np.ndarray:
        x = (x - self.mean) @ self.proj
        if self.length_norm:  # radius sqrt(d) keeps the covariances of order one
            x = length_norm(x) * np.sqrt(x.shape[1])
        return x

    def fit(self, emb: np.ndarray, spk: np.ndarray) -> PLDABackend:
        emb = as_matrix(emb, "plda.fit")
        spk = np.asarray(spk).ravel()
        if spk.size != emb.shape[0]:
            raise BackendError(f"plda.fit: {emb.shape[0]} embeddings but {spk.size} speakers")
        n_spk = np.unique(spk).size
        if n_spk < 2:
            raise BackendError(f"plda.fit: need at least 2 speakers, got {n_spk}")
        if np.bincount(np.unique(spk, return_inverse=True)[1]).max() < 2:
            raise BackendError("plda.fit: every speaker has a single embedding, so the "
                               "within-speaker covariance cannot be estimated")
        d_in = emb.shape[1]
        self.mean = emb.mean(axis=0) if self.center else np.zeros(d_in)
        x = emb - self.mean
        self.proj = np.eye(d_in)
        if self.lda_dim is not None:
            dim = max(1, min(self.lda_dim, n_spk - 1, d_in))
            if dim < self.lda_dim:
                log.info("plda: LDA dimension clipped from %d to %d", self.lda_dim, dim)
            self.proj = _lda(x, spk, dim)
        if self.whiten:
            self.proj = self.proj @ _whitener(x @ self.proj)
        y = self._preprocess(emb)
        self.mu, self.between, self.within = two_covariance_em(y, spk, self.em_iters)
        self._prepare_scoring()
        return self

    def _prepare_scoring(self) -> None:
        b, w = self.between, self.within
        t = b + w
        t_inv = np.linalg.inv(t)
        schur = t - b @ t_inv @ b  # conditional covariance of x2 given x1 (same speaker)
        a = np.linalg.inv(schur)
        c = -t_inv @ b @ a
        self._q = _sym(t_inv - a)  # quadratic term of each side
        self._p = _sym(-c)  # cross term
        self._const = 0.5 * (np.linalg.slogdet(t)[1] - np.linalg.slogdet(schur)[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mu is None:
            raise BackendError("plda backend must be fitted (or loaded) before scoring")
        x = as_matrix(x, "plda", self.mean.size)
        return self._preprocess(x) - self.mu

    def _quad(self, x: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x @ self._q, x)  # x_i' Q x_i via one matmul (BLAS)

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cross = np.einsum("ij,ij->i", a @ self._p, b)
        return 0.5 * (self._quad(a) + self._quad(b)) + cross + self._const

    def score_indexed(
        self, a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray
    ) -> np.ndarray:
        # Quadratic terms and a @ P once per distinct utterance, not once per trial.
        qa, qb, ap = self._quad(a), self._quad(b), a @ self._p
        def block(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            return 0.5 * (qa[i] + qb[j]) + np.einsum("ij,ij->i", ap[i], b[j]) + self._const

        return chunked(ia, ib, block)

    def score_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        quad = 0.5 * (self._quad(a)[:, None] + self._quad(b)[None, :])
        return quad + (a @ self._p) @ b.T + self._const

    # --- state ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        if self.mu is None:
            raise BackendError("plda backend is not fitted; nothing to save")
        return {
            "lda_dim": -1 if self.lda_dim is None else self.lda_dim,
            "whiten": self.whiten,
            "length_norm": self.length_norm,
            "center": self.center,
            "em_iters": self.em_iters,
            "mean": self.mean,
            "proj": self.proj,
            "mu": self.mu,
            "between": self.between,
            "within": self.within,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PLDABackend:
        lda_dim = int(scalar(state, "lda_dim"))
        self = cls(
            lda_dim=None if lda_dim < 0 else lda_dim,
            whiten=bool(scalar(state, "whiten")),
            length_norm=bool(scalar(state, "length_norm")),
            center=bool(scalar(state, "center")),
            em_iters=int(scalar(state, "em_iters")),
        )
        for key in ("mean", "proj", "mu", "between", "within"):
            if key not in state:
                raise BackendError(f"plda state has no field {key!r}")
            setattr(self, key, np.asarray(state[key], dtype=np.float64))
        self._prepare_scoring()
        return self
