"""Corpora in object storage and sharded corpora: ``prepare`` from s3:// roots, ``prepare
publish``, Parquet shards (round trip, a Ray Data stream equal to the per-file one, a tiny
Ray Train run from shards in SeaweedFS)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from speakertune.commands import prepare
from speakertune.data.audio import load_audio
from speakertune.data.errors import DataError
from speakertune.data.manifest import read_manifest
from speakertune.data.readers import read_csv, read_kaldi, read_voxceleb
from speakertune.data.shards import decode_row, read_index, read_shard, write_shards


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    """The AWS_* variables `prepare` reads its S3 endpoint and credentials from."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    return s3_server


def _vox_tree(tiny_corpus, dest, n=8):
    """A VoxCeleb-style tree <spk>/<session>/<utt>.flac from the tiny corpus's first files."""
    df = read_manifest(tiny_corpus / "manifest.parquet").iloc[:n]
    for r in df.itertuples():
        target = dest / r.spk / r.session / f"{r.utt}.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.uri, target)
    return df


def test_shards_round_trip_exactly(tiny_corpus, tmp_path):
    df = read_manifest(tiny_corpus / "manifest.parquet").iloc[:10].copy()
    # Two 16-bit WAVs (re-encoded to FLAC) and a stereo one (mixed down) beside the FLACs.
    rng = np.random.default_rng(0)
    pcm = rng.integers(-30000, 30000, size=(2, 8000), dtype=np.int16)
    for i in range(2):
        sf.write(tmp_path / f"w{i}.wav", pcm[i], 8000, subtype="PCM_16")
    sf.write(tmp_path / "st.wav", pcm.T, 8000, subtype="PCM_16")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not audio")
    extra = pd.DataFrame({"utt": ["w0", "w1", "st", "bad"], "spk": "x", "duration_s": 1.0,
                          "sample_rate": 8000,
                          "uri": [str(tmp_path / f"{u}.wav") for u in ("w0", "w1", "st", "bad")]})
    df = pd.concat([df, extra], ignore_index=True)
    skipped: list = []
    out = write_shards(df, str(tmp_path / "sh"), shard_mb=0.3, seed=1, skipped=skipped)
    assert len(skipped) == 1 and "bad.wav" in skipped[0][0] and "corrupt" in skipped[0][1]
    assert out.rows == len(df) - 1 and len(out.files) >= 3  # 10 x ~100-200 KB FLAC at 0.3 MB
    rows = pd.concat([read_shard(f) for f in out.files], ignore_index=True)
    assert sorted(rows["utt"]) == sorted(df["utt"][:-1])
    assert rows["utt"].tolist() != df["utt"][:-1].tolist()  # seeded shuffle: speakers mixed
    index = read_index(str(tmp_path / "sh"))
    assert index["utt"].tolist() == rows["utt"].tolist()
    assert {str(tmp_path / "sh" / n) for n in index["shard"]} == set(out.files)
    assert pq.read_table(tmp_path / "sh" / "shards").num_rows == out.rows  # a Parquet dataset
    assert pq.ParquetFile(out.files[0]).schema_arrow.field("audio").type == "binary"
    src = df.set_index("utt")
    for r in rows.itertuples():
        sr = int(src.at[r.utt, "sample_rate"])
        got = decode_row(r.audio, sr, r.utt)
        if r.utt == "st":  # stereo: the int16 mean of both channels, as decode_audio mixes
            want = np.round(pcm.mean(axis=0)).astype(np.int16) / np.float32(32768)
            np.testing.assert_allclose(got, want, atol=1 / 32768)
            continue
        np.testing.assert_array_equal(got, load_audio(src.at[r.utt, "uri"], sr))
        assert r.duration_s == pytest.approx(src.at[r.utt, "duration_s"], abs=1e-6)
    with pytest.raises(DataError, match="shard size must be positive"):
        write_shards(df, str(tmp_path / "x"), shard_mb=0)


def test_prepare_from_s3_roots_and_shards_in_the_bucket(aws_env, tiny_corpus, tmp_path, capsys):
    s3 = aws_env
    bucket = s3.make_bucket("prep")
    local = _vox_tree(tiny_corpus, tmp_path / "vox")
    s3.upload_dir(tmp_path / "vox", bucket, "vox/wav")
    out = tmp_path / "prepared"
    rc = prepare.main(["voxceleb", f"s3://{bucket}/vox/wav", "--out", str(out),
                       "--shards", f"s3://{bucket}/vox/shards", "--shard-mb", "0.2"])
    assert rc == 0, capsys.readouterr().err
    df = read_manifest(out / "manifest.parquet")
    assert df["uri"].str.startswith(f"s3://{bucket}/vox/wav/").all() and len(df) == len(local)
    want = local.set_index("utt")["duration_s"]
    for r in df.itertuples():  # utt ids are the VoxCeleb relative paths
        assert r.duration_s == pytest.approx(want[r.utt.split("/")[-1][:-5]])
    index = read_index(f"s3://{bucket}/vox/shards")
    assert sorted(index["utt"]) == sorted(df["utt"]) and index["shard"].nunique() >= 2
    assert "shard(s)" in capsys.readouterr().out
    # Kaldi and CSV inputs from the bucket: relative paths resolve inside it.
    lines = [f"{u} {u.split('/')[0]}\n" for u in df["utt"]]
    for name, text in {"wav.scp": "".join(f"{u} {u}\n" for u in df["utt"]),
                       "utt2spk": "".join(lines)}.items():
        s3.client().put_object(Bucket=bucket, Key=f"vox/wav/{name}", Body=text.encode())
    kaldi, _ = read_kaldi(f"s3://{bucket}/vox/wav")
    assert sorted(kaldi["uri"]) == sorted(df["uri"])
    csv_text = "utt,spk,uri\n" + "".join(f"{u},{u[:7]},{u}\n" for u in df["utt"][:2])
    s3.client().put_object(Bucket=bucket, Key="vox/wav/c.csv", Body=csv_text.encode())
    csv, _ = read_csv(f"s3://{bucket}/vox/wav/c.csv")
    assert csv["uri"].tolist() == [f"s3://{bucket}/vox/wav/{u}" for u in df["utt"][:2]]
    with pytest.raises(DataError, match=r"s3://prep/nothing: VoxCeleb root directory not found"):
        read_voxceleb(f"s3://{bucket}/nothing")


def test_publish_rewrites_uris_to_the_bucket(aws_env, tiny_corpus, tmp_path):
    s3 = aws_env
    bucket = s3.make_bucket("pub")
    local = _vox_tree(tiny_corpus, tmp_path / "vox", n=6)
    assert prepare.main(["voxceleb", str(tmp_path / "vox"), "--out", str(tmp_path / "c")]) == 0
    (tmp_path / "c" / "trials.txt").write_text("1 a b\n")  # copied unchanged
    assert prepare.main(["publish", str(tmp_path / "c"), f"s3://{bucket}/c"]) == 0
    remote = read_manifest(f"s3://{bucket}/c/manifest.parquet")
    mine = read_manifest(tmp_path / "c" / "manifest.parquet")
    assert remote["utt"].tolist() == mine["utt"].tolist()
    # The audio lived outside the corpus dir: it goes under PREFIX/audio/ by relative path.
    assert remote["uri"].tolist() == [f"s3://{bucket}/c/audio/{u}" for u in mine["utt"]]
    np.testing.assert_array_equal(load_audio(remote["uri"].iloc[3], 16000),
                                  load_audio(mine["uri"].iloc[3], 16000))
    body = s3.client().get_object(Bucket=bucket, Key="c/trials.txt")["Body"].read()
    assert body == b"1 a b\n" and len(local) == 6
    with pytest.raises(DataError, match="must be an object-store URI"):
        from speakertune.data.publish import publish_corpus

        publish_corpus(tmp_path / "c", str(tmp_path / "elsewhere"))


def test_publish_follows_no_link_out_uploads_only_audio_and_never_overwrites(
        aws_env, tiny_corpus, tmp_path, capsys):
    """#26: a symlinked credentials file stays home (counted), a manifest naming a non-audio
    file is refused before any upload, and a second publish to the same place is refused; with
    --overwrite the new version goes beside the old files and only the manifests swap."""
    s3 = aws_env
    bucket = s3.make_bucket("pub2")
    _vox_tree(tiny_corpus, tmp_path / "vox", n=4)
    corpus = tmp_path / "c"
    assert prepare.main(["voxceleb", str(tmp_path / "vox"), "--out", str(corpus)]) == 0
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = not-for-the-bucket\n")
    (corpus / "creds.txt").symlink_to(secret)
    dest = f"s3://{bucket}/c"

    def keys() -> set[str]:
        listing = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"] for o in listing}

    assert prepare.main(["publish", str(corpus), dest]) == 0
    assert "skipped 1 symlink(s) leading out of" in capsys.readouterr().out
    first = keys()
    assert "c/manifest.parquet" in first and not any("creds" in k for k in first)
    old_manifest = read_manifest(f"{dest}/manifest.parquet")
    code = prepare.main(["publish", str(corpus), dest])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a published corpus" in err and keys() == first
    assert prepare.main(["publish", str(corpus), dest, "--overwrite"]) == 0
    assert " under v" in capsys.readouterr().out
    new = read_manifest(f"{dest}/manifest.parquet")
    assert all(u.startswith(f"{dest}/v") for u in new["uri"])
    assert first <= keys()  # the old version's files are still there, unchanged
    np.testing.assert_array_equal(load_audio(new["uri"].iloc[0], 16000),
                                  load_audio(old_manifest["uri"].iloc[0], 16000))
    # a manifest naming a file that is not audio: refused before anything is uploaded
    df = read_manifest(corpus / "manifest.parquet")
    bad = tmp_path / "notes.wav.txt"
    bad.write_text("not audio")
    df.loc[df.index[0], "uri"] = str(bad)
    other = tmp_path / "c2"
    other.mkdir()
    from speakertune.data.manifest import write_manifest

    write_manifest(df, other / "manifest.parquet", relative=False)
    before = keys()
    code = prepare.main(["publish", str(other), f"s3://{bucket}/c2"])
    assert code == 2 and "which is not an audio file" in capsys.readouterr().err
    assert keys() == before


def _stream_cfg(root, **flat):
    from test_pipeline import trial_cfg

    return trial_cfg(root, **flat)


def test_sharded_stream_equals_the_per_file_stream(ray_local, tiny_corpus, tmp_path):
    from speakertune.data.corpus import load_corpus
    from speakertune.frontend.stream import build_train_dataset
    from test_pipeline import epoch, fingerprints

    cfg = _stream_cfg(tiny_corpus, **{"augment.noise_prob": 0.5, "augment.specaug_prob": 0.5})
    corpus = load_corpus(cfg["data"])
    write_shards(read_manifest(tiny_corpus / "manifest.parquet"), str(tmp_path / "sh"),
                 shard_mb=0.5)
    per_file = build_train_dataset(corpus, cfg, epoch_seed=3)
    cfg["data"].update(shards=str(tmp_path / "sh"), shard_buffer=8)
    sharded = build_train_dataset(corpus, cfg, epoch_seed=3)
    orders = []
    for _ in range(2):  # two epochs: same features per utterance and epoch, new order
        _, lab_a, a = epoch(per_file, cfg, 0)
        _, lab_b, b = epoch(sharded, cfg, 0)
        assert len(b) == len(corpus.train)  # dev speakers' rows in the shards never train
        assert fingerprints(a) == fingerprints(b) and sorted(lab_a) == sorted(lab_b)
        orders.append(lab_b)
    assert orders[0] != orders[1]
    corpus.train = pd.concat([corpus.train, corpus.train.iloc[:1].assign(utt="ghost")])
    with pytest.raises(DataError, match=r"1 of \d+ training utterances are not in .*'ghost'"):
        build_train_dataset(corpus, cfg, epoch_seed=3)
    per_file.skip_counter.close()
    sharded.skip_counter.close()


@pytest.mark.slow
def test_tiny_train_run_streams_from_shards_in_seaweedfs(ray_local, s3_server, tiny_corpus,
                                                         tmp_path):
    """Ray Train, 2 epochs, training audio from shards in the bucket. One training row's audio
    in the shards is garbage (its file on disk is fine): it is skipped and counted every epoch,
    which only happens if the run read the shards."""
    import pyarrow as pa
    from speakertune.data.corpus import load_corpus
    from speakertune.train import driver
    from test_trainer import tiny_cfg

    local = tmp_path / "sh"
    write_shards(read_manifest(tiny_corpus / "manifest.parquet"), str(local), shard_mb=0.5)
    cfg = tiny_cfg(tiny_corpus, epochs=2, num_workers=1, cpus_per_worker=1)
    victim = load_corpus(cfg["data"]).train["utt"].iloc[0]
    index = read_index(str(local))
    shard = local / index.set_index("utt").at[victim, "shard"]
    table = pq.read_table(shard)
    audio = [b"not flac" if u == victim else a for u, a in
             zip(table["utt"].to_pylist(), table["audio"].to_pylist())]  # fmt: skip
    pq.write_table(table.set_column(table.schema.get_field_index("audio"), "audio",
                                    pa.array(audio, pa.binary())), shard)  # fmt: skip
    bucket = s3_server.make_bucket("train-shards")
    s3_server.upload_dir(local, bucket, "sh")
    cfg["data"].update(shards=f"s3://{bucket}/sh", storage=s3_server.storage_options)
    out = driver.train(cfg, storage_path=str(tmp_path / "runs"), name="shards")
    history = out["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["skipped_utterances"] for h in history] == [1, 1]
    assert all(np.isfinite(h["train_loss"]) and 0.0 <= h["val_eer"] <= 1.0 for h in history)
