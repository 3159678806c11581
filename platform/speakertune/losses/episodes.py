"""Batches of N speakers x M utterances (speaker-major) for the end-to-end losses."""

from __future__ import annotations

import torch


class EpisodeError(ValueError):
    """The labels of a batch are not N speakers x M utterances in speaker-major order."""


def as_episode(emb: torch.Tensor, labels: torch.Tensor, loss: str,
               min_utts: int = 2) -> torch.Tensor:
    """[N*M, D] + labels -> [N, M, D], checking the batch layout the loss relies on."""
    n_total = labels.shape[0]
    change = torch.nonzero(labels[1:] != labels[:-1]).flatten()
    m = int(change[0]) + 1 if change.numel() else n_total
    n = n_total // m
    blocks = labels[: n * m].reshape(n, m) if n * m == n_total else None
    ok = (
        blocks is not None
        and bool((blocks == blocks[:, :1]).all())
        and blocks[:, 0].unique().numel() == n
    )
    if not ok:
        raise EpisodeError(
            f"loss {loss!r} needs a batch of N speakers x M utterances in speaker-major order "
            f"(use speakertune.losses.SpeakerBatcher); got labels {labels.tolist()[:24]}"
        )
    if m < min_utts or n < 2:
        raise EpisodeError(
            f"loss {loss!r} needs at least 2 speakers x {min_utts} utterances per batch, "
            f"got {n} x {m}"
        )
    return emb.reshape(n, m, -1)
