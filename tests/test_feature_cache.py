"""The on-disk evaluation-feature cache shared by a sweep's trials (scoring.feature_cache)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from speakertune.config import DEFAULTS, deep_merge
from speakertune.scoring.embed import load_features
from speakertune.scoring.feature_cache import cache_key, cached_features

CFG = deep_merge(DEFAULTS, {"features": {"name": "fbank", "num_mel_bins": 40}})


@pytest.fixture
def table(tmp_path):
    """Four real 1-2 s FLAC files (noise-modulated tones) and one that is not audio."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        n = 16000 + 4000 * i
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(n)
        path = tmp_path / f"u{i}.flac"
        sf.write(path, wave.astype(np.float32), 16000)
        rows.append({"utt": f"u{i}", "uri": str(path)})
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio")
    rows.append({"utt": "bad", "uri": str(bad)})
    return pd.DataFrame(rows)


def _same(a, b) -> None:
    assert sorted(a.feats) == sorted(b.feats) and a.skipped == b.skipped
    for u in a.feats:
        assert torch.equal(a.feats[u], b.feats[u])


def test_second_reader_gets_identical_features_from_the_file(table, tmp_path):
    cache = tmp_path / "cache"
    direct = load_features(table, CFG, max_seconds=1.5)
    first, hit1 = cached_features(table, CFG, cache, max_seconds=1.5)
    second, hit2 = cached_features(table, CFG, cache, max_seconds=1.5)
    assert (hit1, hit2) == (False, True)
    _same(direct, first)
    _same(direct, second)  # the skipped file's reason survives the round trip too
    assert "bad" in second.skipped and second.feats["u3"].shape == (150, 40)
    assert [p.suffix for p in cache.iterdir()] == [".pt"]  # no temporary file left


def test_anything_the_features_depend_on_changes_the_key(table):
    key = cache_key(table, CFG, 1.5)
    assert cache_key(table, CFG, 2.0) != key
    assert cache_key(table, deep_merge(CFG, {"features": {"num_mel_bins": 80}}), 1.5) != key
    assert cache_key(table, deep_merge(CFG, {"preprocess": {"vad": True}}), 1.5) != key
    assert cache_key(table.iloc[:3], CFG, 1.5) != key
    # the model, loss or learning rate do not touch the features: same file
    assert cache_key(table, deep_merge(CFG, {"optimizer": {"lr": 1.0}}), 1.5) == key
    # a file rewritten in place (new mtime) is a new key, not a stale hit
    path = table.loc[0, "uri"]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key(table, CFG, 1.5) != key


def test_concurrent_writers_and_a_corrupt_file(table, tmp_path):
    cache = tmp_path / "cache"
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(
        cached_features(table, CFG, cache, max_seconds=1.5)[0])) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(out) == 3 and len(list(cache.iterdir())) == 1
    got, hit = cached_features(table, CFG, cache, max_seconds=1.5)
    assert hit
    _same(out[0], got)
    # a truncated file is recomputed (and replaced), never returned
    (path,) = cache.iterdir()
    path.write_bytes(path.read_bytes()[:100])
    again, hit = cached_features(table, CFG, cache, max_seconds=1.5)
    assert not hit
    _same(got, again)
    assert cached_features(table, CFG, cache, max_seconds=1.5)[1]


def test_object_store_sweeps_cache_on_each_node_and_clear_every_node(ray_local, tmp_path,
                                                                       monkeypatch):
    """With s3:// storage the trials run on many nodes: each node keeps the sweep's features in
    its own temp dir (one folder per sweep), and the sweep's end clears it on every node."""
    from speakertune.scoring.feature_cache import clear_cache, sweep_cache_dir
    from speakertune.search.ray_runtime import on_every_node

    assert sweep_cache_dir("/r/s/train_runs") == "/r/s/train_runs/.feature_cache"
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    one, two = sweep_cache_dir("s3://b/p/s1/train_runs"), sweep_cache_dir("s3://b/p/s2/train_runs")
    assert one != two and one.startswith(str(tmp_path)) and "://" not in one
    assert sweep_cache_dir("s3://b/p/s1/train_runs") == one  # every node derives the same path
    Path(one).mkdir(parents=True)
    (Path(one) / "a.pt").write_bytes(b"x" * 1000)
    nodes = sum(1 for n in ray_local.nodes() if n["Alive"])
    freed = on_every_node(clear_cache, one)  # the session Ray: one node, this machine
    assert len(freed) == nodes and sum(freed) == 1000 and not Path(one).exists()
