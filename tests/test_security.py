"""Security: credentials never reach logs, printed output or written files; checkpoints load
with ``weights_only=True`` (pickled code is refused, never run); the Ray dashboard binds to
127.0.0.1 by default."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from speakertune import redact
from speakertune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speakertune.config import resolve
from speakertune.data import storage
from speakertune.data.audio import load_audio
from speakertune.data.errors import AudioError, StorageError

SR = 16000
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"  # AWS's documented example secret


# --- redaction itself ------------------------------------------------------------------------


def test_redact_config_masks_secret_keys_at_any_depth_and_leaves_the_rest():
    cfg = {
        "data": {"storage": {"endpoint_override": "http://127.0.0.1:8333", "region": "eu-west-1",
                             "access_key": "AKIAEXAMPLE1", "secret_key": SECRET,
                             "session_token": "FwoGZXIvYXdzEXAMPLE"},  # fmt: skip
                 "manifest": f"s3://AKIAEXAMPLE1:{SECRET}@corpus/manifest.parquet"},
        "db": [{"password": "hunter2hunter2", "user": "ray"}],
        "oauth": {"client_secret": "abc123def456", "token": "t0k3n-value", "max_tokens": 7},
        "loss": {"name": "aam_softmax", "margin": 0.2},
        "note": f"exported AWS_SECRET_ACCESS_KEY={SECRET} before the run",
    }
    before = json.dumps(cfg)
    out = redact.redact_config(cfg)
    assert json.dumps(cfg) == before  # the input is not modified
    flat = json.dumps(out)
    for secret in (SECRET, "AKIAEXAMPLE1", "FwoGZXIvYXdzEXAMPLE", "hunter2hunter2",
                   "abc123def456", "t0k3n-value"):  # fmt: skip
        assert secret not in flat, secret
    st = out["data"]["storage"]
    assert st["secret_key"] == st["access_key"] == st["session_token"] == redact.MASK
    assert st["endpoint_override"] == "http://127.0.0.1:8333" and st["region"] == "eu-west-1"
    assert out["data"]["manifest"] == "s3://***@corpus/manifest.parquet"
    assert out["db"] == [{"password": "***", "user": "ray"}]
    assert out["oauth"]["max_tokens"] == 7 and out["loss"] == cfg["loss"]
    assert out["note"] == "exported AWS_SECRET_ACCESS_KEY=*** before the run"


def test_aws_key_spellings_and_percent_encoded_secrets_are_masked(monkeypatch):
    """#26: ``SecretAccessKey``/``AccessKeyId`` (boto's JSON), ``aws_access_key_id`` (the
    credentials file) and a secret percent-encoded into a URL or a form body."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    cfg = {"Response": {"AccessKeyId": "AKIAEXAMPLE2", "SecretAccessKey": "s3cr3t-value/x",
                           "SessionToken": "FwoGZXIvEXAMPLE2", "Expiration": "2026-12-08"},
           "aws_access_key_id": "AKIAEXAMPLE3", "accessKeyId": "AKIAEXAMPLE4",
           "max_seconds": 6.0, "keyword": "ok"}  # fmt: skip
    out = redact.redact_config(cfg)
    assert out["Response"] == {"AccessKeyId": "***", "SecretAccessKey": "***",
                                  "SessionToken": "***", "Expiration": "2026-12-08"}
    assert out["aws_access_key_id"] == out["accessKeyId"] == "***"
    assert out["max_seconds"] == 6.0 and out["keyword"] == "ok"
    encoded = SECRET.replace("/", "%2F")
    for text in (f"GET /b/k?X-Amz-Signature=abc&secret={encoded}",
                 f"body: key={encoded.replace('%2F', '%2f')}&x=1",
                 f"PUT https://h/u?s={SECRET.replace('/', '%2f')} 403"):
        assert "EXAMPLEKEY" not in redact.redact_text(text), text


def test_log_filter_scrubs_messages_arguments_and_tracebacks(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-only-secret-value")
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    redact.install([handler])
    logger = logging.getLogger("speakertune.test_security")
    logger.addHandler(handler)
    try:
        logger.warning("opening with %s", {"secret_key": "opt-secret-zz", "region": "r1"})
        logger.warning("reading s3://AKID:%s@bucket/a.wav", SECRET)
        logger.warning("environment holds env-only-secret-value")  # caught as a known value
        try:
            raise OSError(f"cannot open s3://AKID:{SECRET}@bucket/b.wav (password=pa55word!)")
        except OSError:
            logger.exception("read failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    for secret in (SECRET, "opt-secret-zz", "env-only-secret-value", "pa55word!"):
        assert secret not in text, secret
    assert text.count("***") >= 5 and "Traceback" in text and "region': 'r1'" in text


# --- end to end through the data layer, embeddings, checkpoints and evaluation --------------


def _tiny_cfg(storage_options: dict) -> dict:
    return resolve({
        "data": {"storage": dict(storage_options)},
        "model": {"name": "tdnn", "channels": 16, "out_channels": 24},
        "pooling": {"name": "stats"},
        "features": {"name": "fbank", "num_mel_bins": 24},
        "embed_dim": 8,
    })  # fmt: skip


@pytest.fixture
def s3_secret_corpus(s3_server, tmp_path):
    """A 4-speaker corpus in s3://sec-corpus/ served with a known secret (the server's)."""
    local = tmp_path / "corpus"
    rows = []
    rng = np.random.default_rng(0)
    for s in range(4):
        for u in range(3):
            name = f"s{s}-u{u}.flac"
            t = np.arange(SR) / SR
            x = 0.3 * np.sin(2 * np.pi * (150 + 80 * s) * t) + 0.01 * rng.standard_normal(SR)
            (local / "wav").mkdir(parents=True, exist_ok=True)
            sf.write(local / "wav" / name, x.astype(np.float32), SR)
            rows.append((f"s{s}-u{u}", f"s{s}", f"wav/{name}", 1.0, SR))
    bucket = s3_server.make_bucket("sec-corpus")
    s3_server.upload_dir(local / "wav", bucket, "wav")
    from speakertune.data.manifest import write_manifest

    df = pd.DataFrame(rows, columns=["utt", "spk", "uri", "duration_s", "sample_rate"])
    write_manifest(df, f"s3://{bucket}/manifest.parquet", s3_server.storage_options)
    return f"s3://{bucket}"


def test_secret_never_reaches_logs_output_or_files(s3_server, s3_secret_corpus, tmp_path,
                                                   caplog, capfd, monkeypatch):  # fmt: skip
    pytest.importorskip("speakertune.frontend.pipeline")
    from speakertune.data.corpus import load_corpus
    from speakertune.models import build_encoder
    from speakertune.scoring.embed import embed_utterances
    from speakertune.scoring.evaluate import evaluate

    secret = s3_server.secret_key
    opts = s3_server.storage_options
    caplog.set_level(logging.DEBUG)
    corpus = load_corpus({"corpus": "manifest", "manifest": f"{s3_secret_corpus}/manifest.parquet",
                          "storage": opts, "val_speakers": 2, "val_trials": 30})  # fmt: skip
    assert corpus.storage_options == opts and secret not in repr(corpus)
    cfg = _tiny_cfg(opts)
    torch.manual_seed(0)
    enc = build_encoder(cfg["model"], cfg["pooling"], 24, cfg["embed_dim"])
    val = pd.concat([corpus.val, pd.DataFrame([{  # one object that is not there: a logged skip
        "utt": "ghost", "spk": "s9", "uri": f"{s3_secret_corpus}/wav/ghost.flac"}])])
    emb = embed_utterances(enc, val, cfg, progress=True)
    assert "ghost" in emb.skipped and len(emb) == len(corpus.val)
    out = tmp_path / "out"
    save_checkpoint(out / "ckpt", encoder=enc, loss=None, cfg=cfg, num_classes=2, feat_dim=24,
                    metrics={"val_eer": 0.5})  # fmt: skip
    saved = load_checkpoint(out / "ckpt").cfg["data"]["storage"]
    assert saved["secret_key"] == redact.MASK and saved["endpoint_override"] == opts[
        "endpoint_override"]
    # The masked config still works: the credentials then come from the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    res = evaluate(out / "ckpt", f"{s3_secret_corpus}/manifest.parquet", corpus.trials,
                   backend="cosine", out_dir=out / "eval", progress=True, tsne=False)
    assert 0.0 <= res.metrics["cosine"]["eer"] <= 1.0
    with pytest.raises(AudioError, match="credentials inside a URI are not accepted") as info:
        load_audio(f"s3://{s3_server.access_key}:{secret}@sec-corpus/wav/s0-u0.flac", SR, opts)
    logging.getLogger("speakertune").error("failed: %s", info.value)

    written = [p for p in out.rglob("*") if p.is_file()]
    assert {"config.yaml", "model.pt", "metrics.json", "det.png"} <= {p.name for p in written}
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    assert s3_server.access_key.encode() not in (out / "ckpt" / "config.yaml").read_bytes()
    printed = capfd.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "embedded" in printed.err and "ghost.flac" in logged  # the channels were captured
    for channel in (printed.out, printed.err, logged, str(info.value)):
        assert secret not in channel


def test_no_secret_in_ray_trains_run_state(ray_local, s3_server, s3_secret_corpus, tmp_path,
                                           monkeypatch):
    """Ray Train keeps ``train_loop_config`` in its run state, which the dashboard serves at
    /api/train/v2/runs (with Ray's Train dashboard on): the credentials of ``data.storage``
    must not be there, and the workers (with no AWS variables of their own) must still read
    the corpus with them."""
    from ray.train.v2._internal.state.state_actor import get_state_actor
    from speakertune.train import driver
    from test_trainer import tiny_cfg

    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the Train dashboard's switch
    secret = s3_server.secret_key
    cfg = tiny_cfg(Path("unused"), epochs=1, num_workers=1, cpus_per_worker=1, plda_utts=6)
    cfg["data"] = {"corpus": "manifest", "manifest": f"{s3_secret_corpus}/manifest.parquet",
                   "storage": s3_server.storage_options, "val_speakers": 2, "val_trials": 30}
    out = driver.train(cfg, storage_path=str(tmp_path / "runs"), name="sealed")
    assert out["history"][0]["skipped_utterances"] == 0 and 0 <= out["val_eer"] <= 1
    runs = ray_local.get(get_state_actor().get_train_runs.remote())
    state = [r.model_dump_json() for r in runs.values() if r.name == "sealed"]
    assert len(state) == 1 and "storage_options" in state[0]
    assert secret not in state[0] and s3_server.access_key not in state[0]
    for path in (tmp_path / "runs").rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_masked_storage_options_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    opts = storage.s3_options({"access_key": redact.MASK, "secret_key": redact.MASK,
                               "endpoint_override": "http://127.0.0.1:9"})  # fmt: skip
    assert opts["access_key"] == "AKIAFROMENV" and opts["secret_key"] == "secret-from-env"
    assert opts["endpoint_override"] == "127.0.0.1:9" and opts["scheme"] == "http"


@pytest.mark.parametrize("uri", [f"s3://AKIDEXAMPLE:{SECRET}@bucket/a.flac",
                                 f"s3://bucket/a.flac?token={SECRET}",
                                 f"gs://user:{SECRET}@bucket/a.flac"])
def test_credentials_inside_a_uri_are_refused_without_echoing_them(uri):
    with pytest.raises(StorageError, match="credentials inside a URI are not accepted") as info:
        storage.read_bytes(uri)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    assert storage.get_filesystem("s3://bucket/spk@1.flac", {"region": "r"})[1] == (
        "bucket/spk@1.flac")  # an "@" in a key is not user info


# --- checkpoints never unpickle code ---------------------------------------------------------


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code execution, observable as a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["model.pt", "train_state.pt"])
def test_checkpoint_carrying_a_pickled_object_is_refused_and_never_run(tmp_path, target):
    cfg = _tiny_cfg({})
    from speakertune.models import build_encoder

    enc = build_encoder(cfg["model"], cfg["pooling"], 24, cfg["embed_dim"])
    d = save_checkpoint(tmp_path / "c", encoder=enc, loss=None, cfg=cfg, num_classes=2,
                        feat_dim=24, train_state={"epoch": 1})  # fmt: skip
    marker = tmp_path / "pwned"
    blob = torch.load(d / target, weights_only=True)
    blob["payload"] = _Payload(marker)
    torch.save(blob, d / target)
    with pytest.raises(CheckpointError, match=rf"{target}: cannot load \(Weights only load"):
        load_checkpoint(d)
    assert not marker.exists()
    # Control: the payload is live - a plain unpickling load does run it.
    torch.load(d / target, weights_only=False)
    assert marker.exists()


# --- Ray dashboard binding -------------------------------------------------------------------


def test_ray_dashboard_binds_to_localhost_by_default():
    """The sweep's ``ray.init`` arguments, checked directly (no Ray start): the dashboard has
    no authentication, so every way the sweep starts or joins Ray binds it to loopback."""
    import ray

    pytest.importorskip("speakertune.search.ray_runtime")
    from speakertune.search.ray_runtime import ray_init_kwargs

    accepted = set(inspect.signature(ray.init).parameters)
    local = ray_init_kwargs(None)
    fallback = ray_init_kwargs(None, dashboard=False)
    remote = ray_init_kwargs("ray://head:10001")
    for kwargs in (local, fallback, remote):
        assert kwargs["dashboard_host"] == "127.0.0.1", kwargs
        assert set(kwargs) <= accepted, set(kwargs) - accepted  # a misspelt key would be ignored
    assert local["include_dashboard"] is True and local["dashboard_port"] == 8265
    assert fallback["include_dashboard"] is False and "address" not in fallback
    assert remote["address"] == "ray://head:10001" and "dashboard_port" not in remote


def test_temporary_credentials_carry_their_session_token(monkeypatch) -> None:
    from speakertune.data import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret/example")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN")
    opts = storage.s3_options()
    assert opts["session_token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
    assert opts["access_key"] == "ASIAEXAMPLE"
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    assert "session_token" not in storage.s3_options()
