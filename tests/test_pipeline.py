"""The Ray Data front end on a real local cluster: local and s3:// corpora, skips, epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray.data
import torch
from speakertune.config import ConfigError, resolve
from speakertune.data.audio import load_audio
from speakertune.data.corpus import load_corpus
from speakertune.frontend.features import build_feature
from speakertune.frontend.pipeline import (
    FrontEnd,
    collate_random_crop,
    crop_frames,
    extract_features,
)
from speakertune.frontend.preprocess import bandpass
from speakertune.frontend.stream import RandomCropCollate, build_train_dataset

DATA = {"corpus": "synthetic", "speakers": 8, "utts_per_speaker": 4, "val_speakers": 2,
        "min_seconds": 0.5, "max_seconds": 1.0}  # fmt: skip


def trial_cfg(root, **flat):
    return resolve({"data": {**DATA, "root": str(root)}},
                   {"features.num_mel_bins": 24, "trainer.data_cpus": 1, **flat})  # fmt: skip


def fingerprints(feats: np.ndarray) -> list[float]:
    return sorted(np.round(feats.astype(np.float64).sum(axis=(1, 2)), 3).tolist())


def epoch(ds, cfg, seed):
    """One pass through the stream as a trainer sees it (iter_torch_batches + collate),
    also keeping the uncropped rows for comparison."""
    shapes, labels, full = [], [], []

    class Collate(RandomCropCollate):
        def __call__(self, batch):
            full.append(np.array(batch["feats"]))
            return super().__call__(batch)

    collate = Collate(cfg, seed)
    for feats, lab in ds.iter_torch_batches(batch_size=8, collate_fn=collate):
        shapes.append(tuple(feats.shape))
        labels += lab.tolist()
    return shapes, labels, np.concatenate(full)


def test_local_stream_shapes_skips_and_per_epoch_randomness(ray_local, tiny_corpus, tmp_path):
    # Every augmentation on, speed perturbation as new speakers (labels + k * num_classes).
    cfg = trial_cfg(tiny_corpus, **{
        "augment.noise_prob": 0.5, "augment.babble_prob": 0.5, "augment.reverb_prob": 0.5,
        "augment.speed_prob": 0.5, "augment.speed_as_new_speaker": True,
        "augment.specaug_prob": 0.5, "preprocess.bandpass": [60, 7000],
    })  # fmt: skip
    corpus = load_corpus(cfg["data"])
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wave file")
    extra = corpus.train.iloc[:1].assign(utt="broken-utt", uri=str(bad))
    corpus.train = pd.concat([corpus.train, extra], ignore_index=True)
    n_good = len(corpus.train) - 1

    ds = build_train_dataset(corpus, cfg, epoch_seed=5)
    # At most data_cpus feature tasks at once, through the current API (``concurrency=`` is
    # deprecated since Ray 2.51 and logs a warning in every trial).
    op = ds._logical_plan.dag
    assert op.compute == ray.data.TaskPoolStrategy(size=int(cfg["trainer"]["data_cpus"]))
    lo, hi = crop_frames(cfg)
    shapes, labels, first = epoch(ds, cfg, seed=0)
    assert sum(s[0] for s in shapes) == n_good == len(first)
    assert all(lo <= s[1] <= hi and s[2] == 24 for s in shapes)
    assert len({s[1] for s in shapes}) > 1  # random-length egs
    k = corpus.num_classes
    assert sorted(x % k for x in labels) == sorted(corpus.train["label"].iloc[:-1].tolist())
    assert max(labels) < 3 * k and max(labels) >= k  # some rows became speed "speakers"
    assert first.shape[1:] == (hi, 24)
    report = ds.skip_counter.pop()  # this epoch's report: the broken file
    assert report.count == 1 and report.utts == ["broken-utt"] and "broken.wav" in str(report)

    _, labels2, second = epoch(ds, cfg, seed=1)
    assert labels2 != labels  # reshuffled every epoch
    assert fingerprints(second) != fingerprints(first)  # new crops every epoch
    assert ds.skip_counter.pop().utts == ["broken-utt"]  # reported again for epoch 2
    # Every streamed row equals the same front end run here with Ray Data's execution index
    # (the epoch), so per-utterance randomness is reproducible whichever worker ran it.
    fe = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir, seed=5)
    for execution, streamed in ((0, first), (1, second)):
        local = [fe.process(fe.load(r.uri), r.label, fe.rng_for(r.utt, execution))[0]
                 for r in corpus.train.iloc[:-1].itertuples()]  # fmt: skip
        # (a task featurises its chunk as one batch: float32 FFT sizes differ from one at a time)
        assert np.allclose(fingerprints(streamed), fingerprints(np.stack(local)), atol=0.1)
    ds.skip_counter.close()


def test_s3_manifest_streams_from_seaweedfs(ray_local, tiny_corpus, s3_server):
    bucket = s3_server.make_bucket("frontend")
    s3_server.upload_dir(tiny_corpus / "wav", bucket, "tiny/wav")
    s3_server.client().upload_file(str(tiny_corpus / "manifest.parquet"), bucket,
                                   "tiny/manifest.parquet")  # fmt: skip
    cfg = trial_cfg(tiny_corpus, **{"features.name": "mfcc", "features.num_ceps": 13})
    cfg["data"].update(corpus="manifest", manifest=f"s3://{bucket}/tiny/manifest.parquet",
                       storage=s3_server.storage_options)  # fmt: skip
    corpus = load_corpus(cfg["data"])
    assert corpus.train["uri"].str.startswith(f"s3://{bucket}/tiny/").all()
    ds = build_train_dataset(corpus, cfg, epoch_seed=0)
    batches = list(ds.iter_torch_batches(batch_size=6, collate_fn=RandomCropCollate(cfg)))
    assert sum(f.shape[0] for f, _ in batches) == len(corpus.train)
    assert all(f.shape[2] == 13 and f.dtype == torch.float32 for f, _ in batches)
    assert ds.skip_counter.total().count == 0
    ds.skip_counter.close()


def test_collate_random_crop_takes_contiguous_windows_of_one_length():
    feats = np.arange(4 * 50 * 3, dtype=np.float32).reshape(4, 50, 3)
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(20):
        out, lab = collate_random_crop({"feats": feats, "label": np.arange(4)}, 10, 30, rng)
        L = out.shape[1]
        lengths.add(L)
        assert 10 <= L <= 30 and out.shape == (4, L, 3) and lab.tolist() == [0, 1, 2, 3]
        for i in range(4):
            start = int(out[i, 0, 0].item() - feats[i, 0, 0]) // 3
            assert torch.equal(out[i], torch.from_numpy(feats[i, start : start + L]))
    assert len(lengths) > 5
    bad = resolve(flat={"data.min_seconds": 3.0, "data.max_seconds": 2.0})
    with pytest.raises(ConfigError, match="data.min_seconds/max_seconds"):
        crop_frames(bad)


def test_extract_features_is_the_unaugmented_front_end(tiny_corpus):
    cfg = trial_cfg(tiny_corpus)
    uri = pd.read_parquet(tiny_corpus / "manifest.parquet")["uri"].iloc[0]
    wave = load_audio(str(tiny_corpus / uri), 16000)
    feats = extract_features(wave, cfg)
    assert torch.equal(feats, build_feature(cfg)(torch.from_numpy(wave), 16000))
    cfg["preprocess"]["bandpass"] = [200, 5000]
    expected = build_feature(cfg)(torch.from_numpy(bandpass(wave, 16000, 200, 5000)), 16000)
    assert torch.equal(extract_features(torch.from_numpy(wave), cfg), expected)
