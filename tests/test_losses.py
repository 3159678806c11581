"""Losses against independent references (NumPy/SciPy/scikit-learn, explicit loops), margin
properties, speaker-permutation invariance, auxiliary terms and the N x M batcher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from sklearn.metrics import log_loss
from speakertune.config import ConfigError
from speakertune.losses import EpisodeError, SpeakerBatcher, build_loss
from speakertune.registry import LOSSES

D, C = 8, 5
ALL = [
    {"name": "softmax"}, {"name": "a_softmax"}, {"name": "am_softmax"}, {"name": "aam_softmax"},
    {"name": "aam_softmax", "easy_margin": True}, {"name": "center"}, {"name": "ring"},
    {"name": "ge2e", "variant": "softmax"}, {"name": "ge2e", "variant": "contrast"},
    {"name": "triplet", "distance": "cosine", "mining": "hard"},
    {"name": "triplet", "distance": "l2", "mining": "semi_hard"},
    {"name": "contrastive"}, {"name": "prototypical"}, {"name": "angular_prototypical"},
]



def _episode(n: int = 4, m: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """N speakers x M utterances, speaker-major, with speaker structure in the embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, 1, D))
    emb = (centres + 0.7 * rng.normal(size=(n, m, D))).reshape(n * m, D)
    labels = np.repeat(rng.permutation(C)[:n], m)
    return torch.tensor(emb, requires_grad=True), torch.tensor(labels)


def _cos_np(loss, emb: torch.Tensor) -> np.ndarray:
    e = emb.detach().numpy()
    w = loss.main.weight.detach().numpy()
    return (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)).T


def test_every_documented_loss_is_covered() -> None:
    assert {c["name"] for c in ALL} == set(LOSSES.names())


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_loss_has_finite_value_and_gradient(cfg) -> None:
    torch.manual_seed(0)
    loss = build_loss(cfg, D, C).double()
    emb, labels = _episode()
    value, acc = loss(emb, labels)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)
    assert acc is None or 0.0 <= float(acc) <= 1.0
    assert loss.end_to_end == (cfg["name"] in {"ge2e", "triplet", "contrastive", "prototypical",
                                               "angular_prototypical"})
    loss.set_margin_factor(0.5)  # part of every loss's interface


def test_softmax_matches_sklearn_log_loss() -> None:
    loss = build_loss("softmax", D, C).double()
    emb, labels = _episode()
    value, acc = loss(emb, labels)
    logits = loss.main.classifier(emb).detach().numpy()
    probs = np.exp(log_softmax(logits, axis=1))
    assert value.item() == pytest.approx(log_loss(labels.numpy(), probs, labels=range(C)))
    assert acc.item() == pytest.approx(np.mean(logits.argmax(1) == labels.numpy()))


@pytest.mark.parametrize("name", ["am_softmax", "aam_softmax"])
def test_zero_margin_is_scaled_softmax_on_cosines(name: str) -> None:
    loss = build_loss({"name": name, "margin": 0.0, "scale": 30.0}, D, C).double()
    emb, labels = _episode()
    lp = log_softmax(30.0 * _cos_np(loss, emb), axis=1)
    ref = -lp[np.arange(len(labels)), labels.numpy()].mean()
    assert loss(emb, labels)[0].item() == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("name", ["am_softmax", "aam_softmax", "a_softmax"])
def test_larger_margin_gives_larger_loss_on_the_same_logits(name: str) -> None:
    emb, labels = _episode()
    margins = [1, 2, 3, 4] if name == "a_softmax" else [0.0, 0.1, 0.2, 0.35]
    torch.manual_seed(0)
    base = build_loss({"name": name, "margin": margins[0]}, D, C).double()
    values = []
    for m in margins:
        loss = build_loss({"name": name, "margin": m}, D, C).double()
        loss.load_state_dict(base.state_dict())  # same class weights -> same cosines
        values.append(loss(emb, labels)[0].item())
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_aam_target_logit_is_cos_theta_plus_m_and_easy_margin() -> None:
    m, s = 0.3, 10.0
    emb, labels = _episode()
    torch.manual_seed(0)
    hard = build_loss({"name": "aam_softmax", "margin": m, "scale": s}, D, C).double()
    easy = build_loss({"name": "aam_softmax", "margin": m, "scale": s, "easy_margin": True},
                      D, C).double()
    easy.load_state_dict(hard.state_dict())
    cos = _cos_np(hard, emb)
    y = labels.numpy()
    cy = cos[np.arange(len(y)), y]
    theta = np.arccos(cy)
    target_hard = np.where(theta + m < np.pi, np.cos(theta + m), cy - np.sin(np.pi - m) * m)
    target_easy = np.where(cy > 0, np.cos(theta + m), cy)
    for loss, target in ((hard, target_hard), (easy, target_easy)):
        logits = cos.copy()
        logits[np.arange(len(y)), y] = target
        lp = log_softmax(s * logits, axis=1)
        assert loss(emb, labels)[0].item() == pytest.approx(-lp[np.arange(len(y)), y].mean())


def test_margin_factor_scales_the_margin() -> None:
    emb, labels = _episode()
    torch.manual_seed(0)
    full = build_loss({"name": "am_softmax", "margin": 0.4}, D, C).double()
    half = build_loss({"name": "am_softmax", "margin": 0.2}, D, C).double()
    zero = build_loss({"name": "am_softmax", "margin": 0.0}, D, C).double()
    half.load_state_dict(full.state_dict())
    zero.load_state_dict(full.state_dict())
    full.set_margin_factor(0.5)
    assert full(emb, labels)[0].item() == pytest.approx(half(emb, labels)[0].item())
    full.set_margin_factor(0.0)
    assert full(emb, labels)[0].item() == pytest.approx(zero(emb, labels)[0].item())
    with pytest.raises(ValueError, match="margin factor"):
        full.set_margin_factor(1.5)


def test_a_softmax_psi_is_sphereface_piecewise_function() -> None:
    loss = build_loss({"name": "a_softmax", "margin": 4, "lambda_min": 0.0}, D, C).double()
    theta = np.linspace(0.01, np.pi - 0.01, 50)
    cos_y = torch.tensor(np.cos(theta))[:, None]
    got = loss.main.target_logit(cos_y, None).numpy().ravel()
    k = np.floor(4 * theta / np.pi)
    ref = (-1.0) ** k * np.cos(4 * theta) - 2 * k
    np.testing.assert_allclose(got, ref, atol=1e-9)
    assert np.all(np.diff(got) < 0)  # psi decreases monotonically in theta


def _ge2e_reference(e: np.ndarray, w: float, b: float, variant: str) -> float:
    """GE2E by explicit loops over (speaker j, utterance i, centroid k); as in the paper the
    embeddings are the L2-normalised network outputs."""
    e = e / np.linalg.norm(e, axis=2, keepdims=True)
    n, m, _ = e.shape

    def cos(u, v):
        return u @ v / np.linalg.norm(u) / np.linalg.norm(v)

    total = 0.0
    for j in range(n):
        for i in range(m):
            s = np.empty(n)
            for k in range(n):
                if k == j:
                    c = (e[j].sum(axis=0) - e[j, i]) / (m - 1)
                else:
                    c = e[k].mean(axis=0)
                s[k] = w * cos(e[j, i], c) + b
            if variant == "softmax":
                total += -s[j] + np.log(np.exp(s).sum())
            else:
                sig = 1 / (1 + np.exp(-s))
                total += 1 - sig[j] + np.delete(sig, j).max()
    return total / (n * m)


@pytest.mark.parametrize("variant", ["softmax", "contrast"])
def test_ge2e_matches_loop_reference(variant: str) -> None:
    loss = build_loss({"name": "ge2e", "variant": variant, "init_w": 7.0, "init_b": -2.0},
                      D, C).double()
    emb, labels = _episode(n=3, m=4)
    ref = _ge2e_reference(emb.detach().numpy().reshape(3, 4, D), 7.0, -2.0, variant)
    assert loss(emb, labels)[0].item() == pytest.approx(ref, rel=1e-10)


def test_prototypical_losses_match_reference() -> None:
    emb, labels = _episode(n=4, m=3)
    e = emb.detach().numpy().reshape(4, 3, D)
    q, p = e[:, -1], e[:, :-1].mean(axis=1)
    d2 = ((q[:, None] - p[None]) ** 2).sum(-1)
    ref = -np.diag(log_softmax(-d2, axis=1)).mean()
    assert build_loss("prototypical", D, C)(emb, labels)[0].item() == pytest.approx(ref)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)).T
    ref = -np.diag(log_softmax(10 * cos - 5, axis=1)).mean()
    ap = build_loss("angular_prototypical", D, C).double()
    assert ap(emb, labels)[0].item() == pytest.approx(ref)


def _dist(e: np.ndarray, kind: str) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    if kind == "cosine":
        return 1 - e @ e.T
    return np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("mining", ["hard", "semi_hard"])
def test_triplet_matches_brute_force(distance: str, mining: str) -> None:
    emb, labels = _episode(n=4, m=3, seed=3)
    y = labels.numpy()
    d = _dist(emb.detach().numpy(), distance)
    margin, terms = 0.3, []
    for a in range(len(y)):
        pos = [p for p in range(len(y)) if y[p] == y[a] and p != a]
        neg = [n for n in range(len(y)) if y[n] != y[a]]
        if mining == "hard":
            terms.append(max(0.0, max(d[a, pos]) - min(d[a, neg]) + margin))
            continue
        for p in pos:
            semi = [d[a, n] for n in neg if d[a, n] > d[a, p]]
            dn = min(semi) if semi else max(d[a, neg])
            terms.append(max(0.0, d[a, p] - dn + margin))
    loss = build_loss({"name": "triplet", "margin": margin, "distance": distance,
                       "mining": mining}, D, C)
    assert loss(emb, labels)[0].item() == pytest.approx(np.mean(terms), rel=1e-8, abs=1e-12)


def test_contrastive_matches_brute_force() -> None:
    emb, labels = _episode(n=3, m=3, seed=4)
    y = labels.numpy()
    d = _dist(emb.detach().numpy(), "l2")
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            (pos if y[i] == y[j] else neg).append(
                d[i, j] ** 2 if y[i] == y[j] else max(0.0, 1.2 - d[i, j]) ** 2)
    loss = build_loss({"name": "contrastive", "margin": 1.2}, D, C)
    assert loss(emb, labels)[0].item() == pytest.approx(0.5 * (np.mean(pos) + np.mean(neg)))


@pytest.mark.parametrize("name", ["ge2e", "prototypical", "angular_prototypical", "triplet",
                                  "contrastive"])
def test_end_to_end_losses_invariant_to_permuting_speakers(name: str) -> None:
    n, m = 5, 3
    emb, labels = _episode(n=n, m=m, seed=1)
    loss = build_loss(name, D, C).double()
    order = torch.tensor([3, 0, 4, 2, 1])
    rows = (order[:, None] * m + torch.arange(m)).reshape(-1)  # whole speaker blocks move
    a = loss(emb, labels)[0]
    b = loss(emb[rows], labels[rows])[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-10)
    relabelled = labels.clone()  # speaker identities are arbitrary labels too
    relabelled[labels == labels[0]] = 99
    assert loss(emb, relabelled)[0].item() == pytest.approx(a.item(), rel=1e-10)


def test_end_to_end_losses_reject_non_episode_batches() -> None:
    emb = torch.randn(6, D)
    with pytest.raises(EpisodeError, match="speaker-major.*SpeakerBatcher"):
        build_loss("ge2e", D, C)(emb, torch.tensor([0, 1, 0, 1, 2, 2]))
    with pytest.raises(EpisodeError, match="2 speakers x 2 utterances per batch, got 6 x 1"):
        build_loss("prototypical", D, C)(emb, torch.arange(6))


def test_auxiliary_terms_add_with_their_weight() -> None:
    torch.manual_seed(0)
    emb, labels = _episode()
    combo = build_loss({"name": "aam_softmax", "aux": [{"name": "center", "weight": 0.5},
                                                       {"name": "ring", "weight": 0.1}]}, D, C)
    combo.double()
    main, _ = combo.main(emb, labels)
    centres = combo.aux[0].centers.detach().numpy()[labels.numpy()]
    e = emb.detach().numpy()
    center = 0.5 * ((e - centres) ** 2).sum(1).mean()
    norms = np.linalg.norm(e, axis=1)
    ring = 0.5 * ((norms - norms.mean()) ** 2).mean()  # R starts at the first batch's mean norm
    total, _ = combo(emb, labels)
    assert total.item() == pytest.approx(main.item() + 0.5 * center + 0.1 * ring)
    alone = build_loss({"name": "center", "weight": 0.2}, D, C)  # rides on a plain softmax
    assert type(alone.main).__name__ == "SoftmaxLoss" and alone.aux[0].weight == 0.2
    with torch.no_grad():  # centre loss vanishes when every embedding sits on its centre
        alone.aux[0].centers.copy_(torch.randn(C, D))
    on_centres = alone.aux[0].centers.detach()[labels].float()
    assert alone.aux[0](on_centres, labels)[0].item() == 0.0


def test_loss_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.margn: unknown option for loss 'aam_softmax'"):
        build_loss({"name": "aam_softmax", "margn": 0.2}, D, C)
    with pytest.raises(ConfigError, match=r"^loss\.aux\[0\]\.name: 'triplet' is not auxiliary"
                       r"|^loss\.aux\[0\]\.name: 'triplet' is not an auxiliary loss"):
        build_loss({"name": "softmax", "aux": [{"name": "triplet"}]}, D, C)
    with pytest.raises(ConfigError, match=r"^loss \(loss 'am_softmax'\): margin must be >= 0"):
        build_loss({"name": "am_softmax", "margin": -1}, D, C)


def _stream(batcher: SpeakerBatcher, feats: np.ndarray, labels: np.ndarray,
            chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(0, labels.size, chunk):  # streamed in chunks, as a worker's shard arrives
        out += batcher.add(feats[i : i + chunk], labels[i : i + chunk])
    return out


def test_batcher_yields_speaker_major_batches_and_counts_leftovers() -> None:
    rng = np.random.default_rng(0)
    counts = {0: 7, 1: 4, 2: 9, 3: 1, 4: 6, 5: 5}  # speaker 3 has too few utterances
    labels = rng.permutation(np.repeat(list(counts), list(counts.values())))
    rows = np.arange(labels.size)[:, None]  # each row carries its own index
    n, m = 3, 2
    batcher = SpeakerBatcher(n_speakers=n, m_utts=m, rng=np.random.default_rng(1))
    batches = _stream(batcher, rows, labels, 5)
    assert len(batches) > 0
    seen = [int(i) for x, _ in batches for i in x[:, 0]]
    assert len(seen) == len(set(seen))  # no utterance twice in an epoch
    for x, y in batches:
        assert (labels[x[:, 0]] == y).all()  # every row keeps its own label
        spk = y.reshape(n, m)
        assert (spk == spk[:, :1]).all() and len(set(spk[:, 0])) == n
        build_loss("ge2e", D, C)(torch.randn(n * m, D), torch.from_numpy(y))  # accepted
    assert len(seen) + batcher.leftover() == labels.size  # nothing dropped silently
    unused = batcher.leftover() - counts[3]  # left over among speakers with >= m utterances
    assert unused < n * m + sum(c % m for c in counts.values())

    def rows_of(out: list) -> list[list[int]]:
        return [x[:, 0].tolist() for x, _ in out]

    again = SpeakerBatcher(n, m, np.random.default_rng(1))
    assert rows_of(_stream(again, rows, labels, 5)) == rows_of(batches)  # reproducible
    other = SpeakerBatcher(n, m, np.random.default_rng([1, 1]))  # the next epoch's generator
    assert rows_of(_stream(other, rows, labels, 5)) != rows_of(batches)  # reshuffled
    with pytest.raises(ValueError, match="need n_speakers >= 2 and m_utts >= 2"):
        SpeakerBatcher(n_speakers=3, m_utts=1, rng=rng)


def test_batcher_makes_speaker_major_batches_and_loses_nothing() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)  # 6 speakers x 5 rows
    rng.shuffle(labels)
    feats = np.arange(labels.size, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2))
    batcher = SpeakerBatcher(n_speakers=3, m_utts=2, rng=rng)
    out = _stream(batcher, feats, labels, 7)  # uneven chunks
    seen = []
    for x, y in out:
        assert x.shape == (6, 3, 2)
        assert len(set(y.tolist())) == 3 and (y[0::2] == y[1::2]).all()  # speaker-major pairs
        ids = x[:, 0, 0].astype(int)
        assert (labels[ids] == y).all()  # every row keeps its own label
        seen += ids.tolist()
    assert len(seen) == len(set(seen))  # no row used twice
    assert len(seen) + batcher.leftover() == labels.size


def test_ring_radius_is_learned() -> None:
    loss = build_loss({"name": "ring", "weight": 1.0}, D, C)
    emb = torch.randn(6, D) * 3
    loss(emb, torch.zeros(6, dtype=torch.long))
    r0 = loss.aux[0].radius.item()
    assert r0 == pytest.approx(emb.norm(dim=1).mean().item(), rel=1e-6)
    assert math.isfinite(r0)
