"""Window affinities -> speaker labels, chosen by name (``DiarizeConfig.method``):

- ``ahc``: agglomerative clustering, stopped at a score threshold (the checkpoint's calibrated
  LLR 0 by default) or cut into a given number of speakers;
- ``spectral``: a k-nearest-neighbour graph of the windows, speakers counted by the largest
  eigengap of its normalised Laplacian, then k-means on the eigenvectors (the recipe WeSpeaker
  and 3D-Speaker use). Only the neighbours' ranks are used, so any backend's scores (cosine,
  PLDA LLRs) give the same graph for the same order.

Both absorb clusters of fewer than ``min_size`` windows into the large cluster they are most
similar to (a noisy window or two that no speaker claims is not a speaker), and can then move
each window to the cluster it is most similar to on average (``reassign``): the clusters'
members vote, which mends windows that the tree or k-means placed by one near neighbour.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse.csgraph import laplacian
from scipy.spatial.distance import squareform
from sklearn.cluster import k_means

from speakertune.registry import CLUSTERINGS

SPECTRAL_MAX_SPEAKERS = 20  # the eigengap's search range when no max_speakers is given
# The k-NN size when none is given or chosen on dev meetings (window_calibration.py):
# WeSpeaker's fixed 10, which also counted the built-in meetings best among 3, 5, 15 and 20
NEIGHBOURS = 10


@CLUSTERINGS.register("ahc")
def cluster_ahc(
    affinity: np.ndarray, *, threshold: float | None = None, num_speakers: int | None = None,
    linkage_method: str = "average", min_size: int = 1, bounds: tuple[int, int | None] = (1, None),
    neighbours: int | None = None,  # noqa: ARG001 - spectral's; one signature for every method
    reassign: int = 0,
) -> np.ndarray:
    """Agglomerative clustering of an affinity matrix; labels 0..k-1 in order of first use.

    With ``num_speakers`` exactly that many clusters are returned (``_cut_for_count``); with a
    ``threshold`` the tree is cut there, and a count of clusters of at least ``min_size``
    outside ``bounds`` (min, max or None) is clipped to them.

    Example: ``cluster_ahc(aff [40, 40], num_speakers=4)`` -> labels [40] in 0..3.
    """
    n = len(affinity)
    if n <= 1:
        return np.zeros(n, dtype=int)
    if threshold is None and num_speakers is None:
        raise ValueError("ahc needs a threshold or num_speakers")
    # scipy clusters distances: flip the affinity so that the largest similarity is distance 0.
    top = float(affinity.max())
    dist = top - affinity
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method=linkage_method)
    if num_speakers is None:
        raw = fcluster(z, t=top - float(threshold), criterion="distance")
        found = int((np.bincount(raw) >= min_size).sum())
        target = _clip(found, bounds)
        if target != found:
            return cluster_ahc(affinity, num_speakers=target, linkage_method=linkage_method,
                               min_size=min_size, reassign=reassign)
    else:
        raw = _cut_for_count(z, affinity, min(num_speakers, n), min_size)
        return first_use_order(reassign_windows(raw, affinity, reassign))
    return first_use_order(reassign_windows(absorb_small(raw, affinity, min_size), affinity,
                                            reassign))


def _cut_for_count(z: np.ndarray, affinity: np.ndarray, count: int, min_size: int
                   ) -> np.ndarray:
    """Exactly ``count`` clusters from the tree ``z``: the lowest cut whose ``count`` largest
    clusters all reach ``min_size`` (else the cut where most of them do), the other
    clusters' items joined to the kept cluster they are most similar to."""
    best, best_large = None, -1
    for k in range(count, len(affinity) + 1):
        raw = fcluster(z, t=k, criterion="maxclust")
        sizes = np.sort(np.bincount(raw))[::-1][:count]
        large = int((sizes >= min_size).sum())
        if large > best_large:
            best, best_large = raw, large
        if large >= count:
            break
    sizes = np.bincount(best)
    keep = np.argsort(-sizes, kind="stable")[:count]
    return absorb_small(best, affinity, int(sizes[keep].min()), keep=keep)


@CLUSTERINGS.register("spectral")
def cluster_spectral(
    affinity: np.ndarray, *, threshold: float | None = None, num_speakers: int | None = None,
    linkage_method: str | None = None,  # noqa: ARG001 - ahc's
    min_size: int = 1, bounds: tuple[int, int | None] = (1, None),
    neighbours: int | None = NEIGHBOURS,
    reassign: int = 0,
) -> np.ndarray:
    """Spectral clustering of an affinity matrix; labels 0..k-1 in order of first use.

    Each window is joined to its ``neighbours`` most similar windows; the number of speakers
    is ``num_speakers`` or the largest eigengap within ``bounds``. With an estimated count and
    a ``threshold``, clusters whose mean affinity is above it are then merged (the eigengap
    over-counts when window scores barely separate speakers); the count stays in ``bounds``.

    Example: ``cluster_spectral(aff [40, 40])`` -> labels [40] in 0..k-1 (k from the eigengap).
    """
    n = len(affinity)
    if n <= 2:
        return np.zeros(n, dtype=int)
    eigvals, eigvecs = np.linalg.eigh(laplacian(knn_graph(affinity, neighbours), normed=True))
    k = num_speakers or eigengap_count(eigvals, bounds)
    k = min(k, n)
    vecs = eigvecs[:, :k]
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    _, raw, _ = k_means(vecs, k, n_init=10, random_state=0)
    if num_speakers is None:  # an estimated count may include noise clusters; a given one not
        raw = absorb_small(raw, affinity, min_size)
        if threshold is not None:
            raw = merge_similar(raw, affinity, threshold, bounds[0])
    return first_use_order(reassign_windows(raw, affinity, reassign))


def merge_similar(labels: np.ndarray, affinity: np.ndarray, threshold: float,
                  min_clusters: int = 1) -> np.ndarray:
    """Average-linkage merging of whole clusters: the two with the highest mean affinity
    between their items are joined while that mean is above ``threshold`` and more than
    ``min_clusters`` remain."""
    labels = np.asarray(labels).copy()
    while len(ks := np.unique(labels)) > max(1, min_clusters):
        member = (labels[:, None] == ks[None, :]).astype(float)  # [n, k]
        sizes = member.sum(0)
        between = (member.T @ affinity @ member) / np.outer(sizes, sizes)
        np.fill_diagonal(between, -np.inf)
        a, b = np.unravel_index(np.argmax(between), between.shape)
        if between[a, b] <= threshold:
            break
        labels[labels == ks[b]] = ks[a]
    return labels


def knn_graph(affinity: np.ndarray, neighbours: int | None) -> np.ndarray:
    """Symmetric 0/0.5/1 adjacency: each item linked to its ``neighbours`` highest-affinity
    others (0 or None: ``NEIGHBOURS``)."""
    n = len(affinity)
    k = max(1, min(int(neighbours or NEIGHBOURS), n - 1))
    scores = np.array(affinity, dtype=float)
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    graph = np.zeros((n, n))
    graph[np.repeat(np.arange(n), k), top.ravel()] = 1.0
    return (graph + graph.T) / 2


def eigengap_count(eigvals: np.ndarray, bounds: tuple[int, int | None]) -> int:
    """k in ``bounds`` with the largest gap between the k-th and (k+1)-th smallest Laplacian
    eigenvalues (k well-separated groups give k eigenvalues near 0)."""
    low, high = bounds
    high = min(high or SPECTRAL_MAX_SPEAKERS, len(eigvals) - 1)
    low = min(max(low, 1), high)
    gaps = np.diff(np.sort(eigvals)[: high + 1])  # gaps[k-1] = lambda_k - lambda_{k-1}
    return low + int(np.argmax(gaps[low - 1: high]))


def absorb_small(labels: np.ndarray, affinity: np.ndarray, min_size: int,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """Items of clusters smaller than ``min_size`` (or not in ``keep``) moved to the large
    (kept) cluster with the highest mean affinity to them; unchanged when none is large."""
    sizes = np.bincount(labels)
    large = [c for c in np.unique(labels)
             if (sizes[c] >= min_size if keep is None else c in set(keep.tolist()))]
    if not large or len(large) == len(np.unique(labels)):
        return labels
    out = labels.copy()
    for i in np.flatnonzero(~np.isin(labels, large)):
        out[i] = max(large, key=lambda c: affinity[i, labels == c].mean())
    return out


def reassign_windows(labels: np.ndarray, affinity: np.ndarray, rounds: int) -> np.ndarray:
    """Up to ``rounds`` passes moving every item to the cluster of highest mean affinity to
    it (itself left out); a pass that would empty a cluster is not taken."""
    labels = np.asarray(labels)
    off = np.array(affinity, dtype=float)
    np.fill_diagonal(off, 0.0)
    for _ in range(rounds):
        ks = np.unique(labels)
        member = labels[:, None] == ks[None, :]  # [n, k]
        sizes = member.sum(0) - member  # each cluster's size without the item itself
        mean = (off @ member) / np.maximum(sizes, 1)
        moved = ks[mean.argmax(1)]
        if np.array_equal(moved, labels) or len(np.unique(moved)) < len(ks):
            break
        labels = moved
    return labels


def first_use_order(raw: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..k-1 in the order they first appear."""
    _, first = np.unique(raw, return_index=True)
    order = {raw[i]: k for k, i in enumerate(sorted(first))}
    return np.array([order[r] for r in raw], dtype=int)


def _clip(count: int, bounds: tuple[int, int | None]) -> int:
    low, high = bounds
    return max(count, low) if high is None else min(max(count, low), high)
