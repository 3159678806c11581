"""Poolings against independent references (NumPy closed forms and explicit loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from speakertune.pooling.attentive_stats import AttentiveStatsPooling
from speakertune.pooling.ghostvlad import GhostVLADPooling
from speakertune.pooling.self_attentive import SelfAttentivePooling
from speakertune.pooling.stats import StatsPooling, mean_std
from speakertune.registry import POOLINGS
from torch import nn


def _x(b: int = 3, c: int = 6, t: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, c, t)))


def test_stats_pooling_is_numpy_mean_and_std() -> None:
    x = _x()
    out = StatsPooling(6)(x).numpy()
    ref = np.concatenate([x.numpy().mean(axis=2), x.numpy().std(axis=2)], axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-10)


def test_weighted_statistics_match_numpy_average() -> None:
    x = _x()
    w = torch.softmax(_x(seed=1), dim=2)
    out = mean_std(x, w).numpy()
    xn, wn = x.numpy(), w.numpy()
    mean = np.stack([[np.average(xn[b, c], weights=wn[b, c]) for c in range(6)]
                     for b in range(3)])
    var = np.stack([[np.average((xn[b, c] - mean[b, c]) ** 2, weights=wn[b, c])
                     for c in range(6)] for b in range(3)])
    np.testing.assert_allclose(out, np.concatenate([mean, np.sqrt(var)], axis=1), rtol=1e-8)


@pytest.mark.parametrize("global_context", [True, False])
def test_attentive_stats_with_flat_attention_is_plain_stats(global_context: bool) -> None:
    pool = AttentiveStatsPooling(6, attention_channels=4, global_context=global_context).double()
    last = pool.attention[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # equal scores -> uniform weights over time
    x = _x()
    torch.testing.assert_close(pool(x), StatsPooling(6)(x))
    # with learned attention the weights are channel-dependent: pooling differs from stats
    nn.init.normal_(last.weight)
    assert not torch.allclose(pool(x), StatsPooling(6)(x))


def test_self_attentive_heads_and_penalty_closed_form() -> None:
    heads, t = 3, 11
    pool = SelfAttentivePooling(6, attention_dim=5, heads=heads).double()
    nn.init.zeros_(pool.w2.weight)  # uniform attention: every head is the plain mean
    x = _x(t=t)
    out = pool(x)
    assert out.shape == (3, heads * 6) == (3, pool.out_dim)
    for h in range(heads):
        torch.testing.assert_close(out[:, h * 6:(h + 1) * 6], x.mean(dim=2))
    # A A^T has every entry 1/T, so ||A A^T - I||^2 = H (1/T - 1)^2 + (H^2 - H) / T^2
    expected = heads * (1 / t - 1) ** 2 + (heads**2 - heads) / t**2
    assert pool.penalty().item() == pytest.approx(expected, rel=1e-10)


def test_ghostvlad_matches_explicit_loops() -> None:
    torch.manual_seed(0)
    k, g, c, t = 4, 2, 6, 9
    pool = GhostVLADPooling(c, clusters=k, ghost_clusters=g).double()
    x = _x(b=2, c=c, t=t)
    out = pool(x).detach().numpy()
    w = pool.assign.weight.detach().numpy()[:, :, 0]
    bias = pool.assign.bias.detach().numpy()
    cent = pool.centroids.detach().numpy()
    for b in range(2):
        xb = x[b].numpy()  # [C, T]
        logits = w @ xb + bias[:, None]  # [K+G, T]
        a = np.exp(logits - logits.max(axis=0))
        a /= a.sum(axis=0)  # softmax over all K+G clusters, ghosts included
        v = np.zeros((k, c))
        for j in range(k):  # ghosts (j >= k) are dropped
            for i in range(t):
                v[j] += a[j, i] * (xb[:, i] - cent[j])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v = v.ravel() / np.linalg.norm(v.ravel())
        np.testing.assert_allclose(out[b], v, rtol=1e-8, atol=1e-12)


def test_ghost_clusters_change_the_descriptor() -> None:
    torch.manual_seed(0)
    pool = GhostVLADPooling(6, clusters=3, ghost_clusters=2).double()
    x = _x()
    before = pool(x)
    with torch.no_grad():
        pool.assign.bias[3:] += 2.0  # ghosts absorb more of the frames
    assert not torch.allclose(before, pool(x))


@pytest.mark.parametrize("name", ["stats", "attentive_stats", "self_attentive", "ghostvlad"])
def test_every_pooling_is_invariant_to_frame_order(name: str) -> None:
    torch.manual_seed(0)
    pool = POOLINGS.build({"name": name}, in_channels=6).double().eval()
    x = _x(t=13)
    perm = torch.randperm(13)
    out = pool(x)
    assert out.shape == (3, pool.out_dim)
    torch.testing.assert_close(out, pool(x[:, :, perm]))
    x.requires_grad_(True)
    pool(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
