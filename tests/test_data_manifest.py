"""Manifests, trial lists and the speaker-disjoint split: round trips and bad input."""

from __future__ import annotations

import shutil
from itertools import combinations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from speakertune.data.errors import DataError, ManifestError, TrialsError
from speakertune.data.manifest import read_manifest, write_manifest
from speakertune.data.split import make_trials, split_by_speaker
from speakertune.data.trials import read_trials, write_trials


def _df(n_spk: int = 6, n_utt: int = 5, uri_root: str = "/data") -> pd.DataFrame:
    rows = [
        {"utt": f"s{s}-u{u}", "spk": f"s{s}", "uri": f"{uri_root}/s{s}/u{u}.wav",
         "duration_s": 1.0 + u, "sample_rate": 16000}
        for s in range(n_spk) for u in range(n_utt)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_relative_uris_follow_the_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "a").mkdir(parents=True)
    sf.write(corpus / "a" / "x.wav", np.zeros(160, dtype=np.float32), 16000)
    df = pd.DataFrame([
        {"utt": "x", "spk": "a", "uri": str(corpus / "a" / "x.wav"), "duration_s": 0.01,
         "sample_rate": 16000, "extra": 7},
        {"utt": "y", "spk": "b", "uri": "/elsewhere/y.wav", "duration_s": 2.0, "sample_rate": 8000},
    ])  # fmt: skip
    write_manifest(df, corpus / "manifest.parquet")
    stored = pq.read_table(corpus / "manifest.parquet").to_pandas()
    assert stored["uri"].tolist() == ["a/x.wav", "/elsewhere/y.wav"]  # root-relative on disk
    moved = tmp_path / "moved"
    shutil.move(corpus, moved)
    back = read_manifest(moved / "manifest.parquet")
    assert back["uri"].tolist() == [str(moved / "a" / "x.wav"), "/elsewhere/y.wav"]
    assert back["extra"].iloc[0] == 7 and back["sample_rate"].dtype.kind == "i"


def test_manifest_errors_name_file_and_row(tmp_path):
    path = tmp_path / "m.parquet"
    bad = _df().drop(columns=["duration_s"])
    pq.write_table(pa.Table.from_pandas(bad), path)
    with pytest.raises(ManifestError, match=r"m\.parquet: missing column\(s\) \['duration_s'\]"):
        read_manifest(path)
    dup = _df()
    dup.loc[7, "utt"] = dup.loc[2, "utt"]
    pq.write_table(pa.Table.from_pandas(dup), path)
    msg = r"m\.parquet: row 8: duplicate utt 's0-u2' \(first at row 3\)"
    with pytest.raises(ManifestError, match=msg):
        read_manifest(path)
    neg = _df()
    neg.loc[4, "duration_s"] = 0.0
    with pytest.raises(ManifestError, match=r"row 5 .*duration_s must be a positive number"):
        write_manifest(neg, path)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match=r"junk\.parquet: not a readable Parquet file"):
        read_manifest(tmp_path / "junk.parquet")
    with pytest.raises(ManifestError, match=r"absent\.parquet: file not found"):
        read_manifest(tmp_path / "absent.parquet")


def test_trials_formats_roundtrip_and_errors(tmp_path):
    ours = tmp_path / "t.txt"
    ours.write_text("a b target\n\n# comment\nc d nontarget\ne f 1\n")
    df = read_trials(ours)
    assert df.values.tolist() == [["a", "b", 1], ["c", "d", 0], ["e", "f", 1]]
    vox = tmp_path / "vox.txt"
    vox.write_text("1 id1/v/00001.wav id1/w/00002.wav\n0 id1/v/00001.wav id2/x/00001.wav\n")
    assert read_trials(vox)["label"].tolist() == [1, 0]
    write_trials(df, tmp_path / "out.txt")
    pd.testing.assert_frame_equal(read_trials(tmp_path / "out.txt"), df)

    cases = {
        "a b\n": r"bad\.txt:1: expected 3 fields",
        "a b 1\nc d maybe\n": r"bad\.txt:2: no label",
        "a b 1\n1 c d\n": r"bad\.txt:2: line format differs",
        "\n# only comments\n": r"bad\.txt: no trials found",
    }
    for text, pattern in cases.items():
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(TrialsError, match=pattern):
            read_trials(tmp_path / "bad.txt")
    with pytest.raises(TrialsError, match=r"t\.txt:5: unknown utterance 'f'"):
        read_trials(ours, known_utts={"a", "b", "c", "d", "e"})


def test_split_is_speaker_disjoint_and_seeded():
    df = _df(n_spk=12, n_utt=4)
    train, val = split_by_speaker(df, 3, seed=1)
    assert val["spk"].nunique() == 3 and len(train) + len(val) == len(df)
    assert not set(train["spk"]) & set(val["spk"])
    again = split_by_speaker(df, 3, seed=1)[1]
    other = [set(split_by_speaker(df, 3, seed=s)[1]["spk"]) for s in range(2, 8)]
    assert set(again["spk"]) == set(val["spk"])
    assert any(o != set(val["spk"]) for o in other)
    with pytest.raises(DataError, match="val_speakers=12"):
        split_by_speaker(df, 12, seed=0)


def test_make_trials_balanced_distinct_reproducible():
    val = _df(n_spk=5, n_utt=6)
    spk = dict(zip(val["utt"], val["spk"]))
    trials = make_trials(val, 100, seed=3)
    assert len(trials) == 100 and trials["label"].sum() == 50
    for e, t, y in trials.itertuples(index=False):
        assert e != t and (spk[e] == spk[t]) == bool(y)
    pairs = {frozenset(p) for p in zip(trials["enroll"], trials["test"])}
    assert len(pairs) == 100  # no trial repeated
    pd.testing.assert_frame_equal(trials, make_trials(val, 100, seed=3))
    assert not trials.equals(make_trials(val, 100, seed=4))
    # Asking for more than exist: every target pair (closed form 5 * C(6, 2) = 75), balanced.
    everything = make_trials(val, 10_000, seed=0)
    n_target = 5 * len(list(combinations(range(6), 2)))
    assert (everything["label"] == 1).sum() == n_target == (everything["label"] == 0).sum()


def test_vectorised_uri_resolution_matches_the_per_row_rule():
    from speakertune.data.storage import resolve_uri, resolve_uris

    uris = pd.Series(["wav/a.flac", "s3://b/x.wav", "/abs/y.wav", "../up/z.wav", "./here.wav",
                      "gs://b/q.flac", "spk/vid/00001.m4a", "file:///tmp/f.wav"])
    for base in ("/data/corpus", "s3://bucket/prefix"):
        assert resolve_uris(uris, base).tolist() == [resolve_uri(u, base) for u in uris]
