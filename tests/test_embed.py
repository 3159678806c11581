"""The one embedding path (scoring.embed): segment rule, chunk averaging, and the same EER from
per-epoch validation and from scoring.evaluate for one checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from speakertune.checkpoint import save_checkpoint
from speakertune.scoring.embed import (
    CHUNK_FRAMES,
    centre_crop,
    embed_features,
    max_frames,
    segments,
)
from test_checkpoint import tiny_cfg, tiny_encoder


@pytest.mark.parametrize("n", [1, 50, CHUNK_FRAMES, CHUNK_FRAMES + 1, 3200, 4500, 10_007])
def test_segments_cover_every_frame_with_equal_chunks(n):
    segs = segments(n)
    if n <= CHUNK_FRAMES:
        assert segs == [(0, n)]  # whole utterance
        return
    assert len(segs) == -(-n // CHUNK_FRAMES)
    assert all(b - a == CHUNK_FRAMES for a, b in segs)
    assert segs[0][0] == 0 and segs[-1][1] == n
    assert all(a2 <= b1 for (_, b1), (a2, _) in zip(segs, segs[1:]))  # no gap


def test_cap_is_a_centred_crop():
    f = torch.arange(900.0)[:, None].repeat(1, 3)
    assert max_frames({"features": {"frame_shift": 10.0}}, 6.0) == 600
    assert max_frames({}, None) is None
    crop = centre_crop(f, 600)
    assert crop.shape == (600, 3) and crop[0, 0] == 150
    assert centre_crop(f, None) is f and centre_crop(f, 1000) is f


def test_long_utterances_are_the_mean_of_their_chunks_and_batching_does_not_matter():
    cfg = tiny_cfg()
    enc = tiny_encoder(cfg)
    torch.manual_seed(0)
    feats = {"short": torch.randn(70, 24), "long": torch.randn(250, 24),
             "also_long": torch.randn(230, 24), "same": torch.randn(70, 24)}
    got = embed_features(enc, feats, chunk_frames=100, batch_size=8)
    alone = {u: embed_features(enc, {u: f}, chunk_frames=100, batch_size=1)[u]
             for u, f in feats.items()}
    with torch.no_grad():
        def one(x):
            return enc(x[None])[0].numpy()

        np.testing.assert_allclose(got["short"], one(feats["short"]), rtol=1e-5, atol=1e-6)
        chunks = [one(feats["long"][a:b]) for a, b in segments(250, 100)]
        assert len(chunks) == 3
        np.testing.assert_allclose(got["long"], np.mean(chunks, axis=0), rtol=1e-5, atol=1e-6)
    for u in feats:
        np.testing.assert_allclose(got[u], alone[u], rtol=1e-5, atol=1e-6)
    assert not enc.training  # left as it was


@pytest.mark.parametrize("max_seconds", [None, 7.0])
def test_validation_and_evaluate_give_the_same_eer(tiny_corpus, tmp_path, max_seconds):
    """The user's check: the sweep's dev EER of a checkpoint equals evaluate()'s on the same
    trials with the same embedding settings (whole utterances, or the same cap)."""
    from speakertune.data.corpus import load_corpus
    from speakertune.data.plda_sample import plda_sample
    from speakertune.scoring.embed import embed_features as val_embed
    from speakertune.scoring.embed import load_features as load_eval_features
    from speakertune.scoring.evaluate import evaluate
    from speakertune.scoring.verification import score_backends

    corpus = load_corpus({"corpus": "synthetic", "root": str(tiny_corpus), "speakers": 8,
                          "utts_per_speaker": 4, "val_speakers": 3})
    cfg = tiny_cfg()
    cfg["trainer"]["val_max_seconds"] = max_seconds
    cfg["backend"]["plda"] = {"lda_dim": 4}
    cfg["trainer"]["val_backend"] = "plda"  # the named backend val_eer (and the ranking) uses
    enc = tiny_encoder(cfg, seed=2)  # a seed where the two backends' EERs differ
    sample = plda_sample(corpus.train, 8000, 4, 0)
    fit = load_eval_features(sample, cfg, max_seconds=max_seconds)
    val = load_eval_features(corpus.val, cfg, max_seconds=max_seconds)
    spk = dict(zip(sample["utt"].astype(str), sample["spk"].astype(str)))
    res = score_backends(val_embed(enc, fit.feats), spk, val_embed(enc, val.feats),
                         corpus.trials, cfg["backend"], "plda")
    assert not res.errors and res.dropped_trials == 0
    if max_seconds is None:
        assert res.ranked_backend == "plda"  # plda 11.1% vs cosine 27.8%
    ckpt = save_checkpoint(tmp_path / "ckpt", encoder=enc, loss=None, cfg=cfg, num_classes=5,
                           feat_dim=24, backends=res.backends, metrics=res.metrics)
    kw = dict(max_seconds=max_seconds, progress=False, tsne=False)
    both = evaluate(ckpt, corpus.val, corpus.trials, backend="both", **kw)
    for name in ("cosine", "plda"):
        assert both.metrics[name]["eer"] == pytest.approx(res.metrics[f"val_eer_{name}"],
                                                          abs=1e-12)
        np.testing.assert_allclose(both.scores[name], res.scores[name], rtol=1e-9, atol=1e-9)
    # backend=None: the backend the checkpoint was ranked on, and its EER is val_eer
    ranked = evaluate(ckpt, corpus.val, corpus.trials, **kw)
    assert ranked.backend == res.ranked_backend and list(ranked.metrics) == [ranked.backend]
    assert ranked.metrics[ranked.backend]["eer"] == pytest.approx(res.metrics["val_eer"],
                                                                  abs=1e-12)
    assert f"scoring backend: {ranked.backend}" in ranked.backend_note
    if max_seconds is None:
        # Backends refitted by evaluate on the same sample (as a fit manifest) agree too.
        bare = save_checkpoint(tmp_path / "bare", encoder=enc, loss=None, cfg=cfg,
                               num_classes=5, feat_dim=24)
        refit = evaluate(bare, corpus.val, corpus.trials, backend="both", fit_manifest=sample,
                         **kw)
        for name in ("cosine", "plda"):
            assert refit.metrics[name]["eer"] == pytest.approx(res.metrics[f"val_eer_{name}"],
                                                               abs=1e-9)
