"""Reading corpora through s3:// from a real SeaweedFS server with real credentials."""

from __future__ import annotations

import numpy as np
import pytest
from speakertune.data.audio import load_audio
from speakertune.data.corpus import load_corpus
from speakertune.data.errors import AudioError, ManifestError, StorageError
from speakertune.data.manifest import read_manifest
from speakertune.data.storage import read_bytes
from speakertune.data.trials import read_trials


@pytest.fixture(scope="module")
def s3_corpus(s3_server, tiny_corpus):
    """The tiny corpus copied as is to s3://speakertune-data/tiny/."""
    bucket = s3_server.make_bucket("speakertune-data")
    assert s3_server.upload_dir(tiny_corpus, bucket, "tiny") > 32
    return f"s3://{bucket}/tiny"


def test_corpus_reads_identically_from_s3(s3_server, s3_corpus, tiny_corpus):
    opts = s3_server.storage_options
    remote = read_manifest(f"{s3_corpus}/manifest.parquet", opts)
    local = read_manifest(tiny_corpus / "manifest.parquet")
    assert remote["uri"].iloc[0] == f"{s3_corpus}/wav/spk0000/spk0000-u000.flac"
    assert remote["utt"].tolist() == local["utt"].tolist()
    for i in (0, 17):
        a = load_audio(remote["uri"].iloc[i], 8000, opts)  # resampled on read, too
        b = load_audio(local["uri"].iloc[i], 8000)
        np.testing.assert_array_equal(a, b)
    corpus = load_corpus({
        "corpus": "manifest", "manifest": f"{s3_corpus}/manifest.parquet",
        "dev_trials": f"{s3_corpus}/trials.txt", "storage": opts,
    })  # fmt: skip
    assert corpus.num_classes == 6 and corpus.storage_options == opts
    assert corpus.val["uri"].str.startswith("s3://").all()
    assert len(corpus.trials) == len(read_trials(tiny_corpus / "trials.txt"))


def test_credentials_from_aws_environment(s3_server, s3_corpus, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    text = read_bytes(f"{s3_corpus}/trials.txt").decode()
    assert text.count("\n") == len(read_trials(f"{s3_corpus}/trials.txt"))


def test_wrong_secret_and_missing_key_fail_clearly(s3_server, s3_corpus):
    wrong = {**s3_server.storage_options, "secret_key": "not-the-secret"}
    uri = f"{s3_corpus}/wav/spk0000/spk0000-u000.flac"
    with pytest.raises(AudioError, match=r"spk0000-u000\.flac: cannot read .*ACCESS_DENIED"):
        load_audio(uri, 16000, wrong)
    with pytest.raises(ManifestError, match=r"manifest\.parquet: cannot read"):
        read_manifest(f"{s3_corpus}/manifest.parquet", wrong)
    with pytest.raises(StorageError, match=r"tiny/nope\.flac: file not found"):
        read_bytes(f"{s3_corpus}/nope.flac", s3_server.storage_options)
    with pytest.raises(StorageError, match=r"storage option 'endpoint'"):
        read_bytes(uri, {"endpoint": s3_server.endpoint})
