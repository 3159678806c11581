"""Reliability under faults and bad input: an S3 server restarted mid-read-loop (reads retry),
the server gone for good (one clear error), a full / read-only disk under checkpoint writes,
and every kind of bad audio while embedding (counted skips, one line each)."""

from __future__ import annotations

import errno
import io
import logging
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from speakertune.checkpoint import CheckpointError, save_checkpoint
from speakertune.config import resolve
from speakertune.data import storage
from speakertune.data.audio import decode_audio, load_audio
from speakertune.data.errors import AudioError
from speakertune.testing import s3server

SR = 16000


def _tone(freq: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class RestartableS3(s3server.SeaweedS3):
    """A SeaweedFS server that comes back on the *same* ports and data dir after ``stop()``,
    as a real object store does after a restart."""

    _ports: list[int] | None = None

    def start(self) -> RestartableS3:
        free = s3server.free_ports
        self._ports = self._ports or free(12)
        s3server.free_ports = lambda n: list(self._ports)  # start() asks for its 12 ports
        try:
            return super().start()
        finally:
            s3server.free_ports = free

    def _wait_ready(self) -> None:  # ready = the objects written before the restart are served
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode})")
            try:
                c = self.client()
                try:
                    c.create_bucket(Bucket="ready-probe")
                except c.exceptions.BucketAlreadyOwnedByYou:
                    pass
                c.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception:  # noqa: BLE001 - any failure means "not yet"
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini not ready after {self.timeout}s")


@pytest.fixture
def restartable_s3(tmp_path):
    server = RestartableS3(tmp_path / "weed").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # a real Ray start / two SeaweedFS starts: ~10 s each
def test_s3_restart_mid_read_loop_is_survived_then_gone_for_good_is_one_clear_error(
    restartable_s3, tmp_path, monkeypatch, caplog
):
    s3 = restartable_s3
    bucket = s3.make_bucket("rel")
    local = tmp_path / "wav"
    local.mkdir()
    freqs = [220.0 + 70 * i for i in range(6)]
    for i, f in enumerate(freqs):
        sf.write(local / f"u{i}.flac", _tone(f), SR)
    assert s3.upload_dir(local, bucket, "wav") == len(freqs)
    uris = [f"s3://{bucket}/wav/u{i}.flac" for i in range(len(freqs))]
    expected = [load_audio(local / f"u{i}.flac", SR) for i in range(len(freqs))]
    opts = s3.storage_options
    # Short, bounded backoff keeps the test quick; the restart below takes several seconds.
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(60, 0.1, 0.5))
    caplog.set_level(logging.WARNING, logger="speakertune.data.storage")

    restarted = threading.Event()

    def restart() -> None:
        s3.stop()
        time.sleep(1.0)  # reads during this gap hit a closed port
        s3.start()
        restarted.set()

    reads, thread = 0, threading.Thread(target=restart)
    while not restarted.is_set() or reads < 3 * len(uris):
        i = reads % len(uris)
        np.testing.assert_array_equal(load_audio(uris[i], SR, opts), expected[i])
        reads += 1
        if reads == len(uris):  # one clean pass first, then restart mid-loop
            thread.start()
    thread.join()
    retried = [r for r in caplog.records if "retry" in r.getMessage()]
    assert retried, "the restart never hit a read: nothing was retried"
    assert all(uri_in(r.getMessage(), uris) for r in retried)

    s3.stop()  # gone for good: a bounded wait, then one line naming the uri
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(3, 0.05, 0.1))
    t0 = time.monotonic()
    with pytest.raises(AudioError) as info:
        load_audio(uris[2], SR, opts)
    msg = str(info.value)
    assert msg.startswith(f"{uris[2]}: cannot read after 3 attempts") and "\n" not in msg
    assert time.monotonic() - t0 < 30


def uri_in(text: str, uris: list[str]) -> bool:
    return any(u in text for u in uris)


def test_not_found_and_access_denied_are_not_retried(monkeypatch):
    # Only network trouble / 5xx are transient; a missing object must fail at once.
    assert storage.is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject "
                                        "operation: curlCode: 7, Couldn't connect to server"))
    assert storage.is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert storage.is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject"))
    assert not storage.is_transient(FileNotFoundError("s3://b/k"))
    assert not storage.is_transient(OSError("AWS Error ACCESS_DENIED during GetObject ... "
                                            "key spk0503-u500.flac"))
    calls = []

    def fails():
        calls.append(1)
        raise FileNotFoundError("gone")

    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(5, 0.01, 0.01))
    fs = storage.pafs.SubTreeFileSystem("/", storage.pafs.LocalFileSystem())  # not "local"
    with pytest.raises(FileNotFoundError):
        storage.with_retries(fs, "s3://b/k", "read", fails)
    assert len(calls) == 1


# --- disk full / read-only file system under checkpoint writes --------------------------


def _cfg() -> dict:
    return resolve({"model": {"name": "tdnn"}, "pooling": {"name": "stats"}, "embed_dim": 8})


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB tmpfs (root may mount one in a container that allows it)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        yield None  # the test falls back to a simulated ENOSPC
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_and_read_only_checkpoint_writes_fail_clearly_and_keep_the_old_file(
    tiny_tmpfs, tmp_path, monkeypatch
):
    small, big = torch.nn.Linear(8, 8), torch.nn.Linear(512, 512)  # 0.3 KiB vs 1 MiB
    root = tiny_tmpfs
    if root is None:  # fallback: mount not permitted; the lowest Python write reports ENOSPC
        root = tmp_path / "sim"
        import speakertune.checkpoint as ckpt

        real_open = open

        def full_open(file, mode="r", *a, **kw):
            fh = real_open(file, mode, *a, **kw)
            if "w" in mode and "b" in mode and Path(file).name.startswith(".model.pt."):
                fh.close()
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
            return fh

        monkeypatch.setattr(ckpt, "open", full_open, raising=False)
    d = root / "ckpt"
    kw = dict(loss=None, cfg=_cfg(), num_classes=2, feat_dim=8)
    if tiny_tmpfs is not None:
        save_checkpoint(d, encoder=small, **kw)  # fits
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(d, encoder=big, **kw)
    msg = str(info.value)
    assert msg == f"{d / 'model.pt'}: cannot write checkpoint (no space left on device)"
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the half-written temporary file was removed
    if tiny_tmpfs is None:
        pytest.skip("tmpfs mount not permitted: ENOSPC simulated at open(); ro case skipped")
    old = torch.load(d / "model.pt", weights_only=True)  # the previous checkpoint survives
    torch.testing.assert_close(old["encoder"]["weight"], small.weight.detach())

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(CheckpointError, match=r"ckpt/model\.pt: cannot write checkpoint "
                                              r"\(read-only file system\)$"):
        save_checkpoint(d, encoder=small, **kw)
    with pytest.raises(CheckpointError, match=r"new: cannot create checkpoint \(read-only"):
        save_checkpoint(tiny_tmpfs / "new", encoder=small, **kw)


# --- bad audio while streaming: each a counted skip with a one-line reason -------------------


def _bad_audio_files(d: Path) -> dict[str, Path]:
    good = _tone(300.0, 1.0)
    sf.write(d / "ok.flac", good, SR)
    flac = (d / "ok.flac").read_bytes()
    nan = good.copy()
    nan[100] = np.nan
    files = {
        "corrupt": (d / "corrupt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200))),
        "truncated": (d / "truncated.flac", flac[: len(flac) // 2]),
        "empty": (d / "empty.wav", b""),
        "wrongfmt": (d / "picture.wav", b"\x89PNG\r\n\x1a\n" + bytes(300)),
        "numpy": (d / "array.flac", _npy_bytes(good)),  # a real .npy file under an audio name
    }
    out = {}
    for utt, (path, data) in files.items():
        path.write_bytes(data)
        out[utt] = path
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    out["nan"] = d / "nan.wav"
    out["missing"] = d / "never-written.wav"
    return out


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


class _MeanEncoder(torch.nn.Module):
    """The smallest encoder: a linear map of the mean feature frame."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dims, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=1))


def test_embedding_counts_every_kind_of_bad_audio_as_a_named_one_line_skip(tmp_path, caplog):
    pytest.importorskip("speakertune.frontend.pipeline")
    from speakertune.scoring.embed import embed_utterances

    bad = _bad_audio_files(tmp_path)
    rows = [(f"good{i}", str(tmp_path / f"good{i}.wav")) for i in range(3)]
    for i, (_, uri) in enumerate(rows):
        sf.write(uri, _tone(200.0 + 50 * i, 1.0), SR)
    rows += [(utt, str(p)) for utt, p in bad.items()]
    df = pd.DataFrame(rows, columns=["utt", "uri"])
    cfg = resolve({"features": {"name": "fbank", "num_mel_bins": 16}})
    caplog.set_level(logging.WARNING, logger="speakertune.scoring.embed")
    emb = embed_utterances(_MeanEncoder(16), df, cfg, batch_size=2)
    assert sorted(emb) == ["good0", "good1", "good2"]
    assert set(emb.skipped) == set(bad)
    for utt, reason in emb.skipped.items():
        assert str(bad[utt]) in reason and "\n" not in reason, (utt, reason)
    assert "file not found" in emb.skipped["missing"]
    assert "empty file" in emb.skipped["empty"]
    assert "NaN" in emb.skipped["nan"]
    warn = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warn) == 1 and f"skipped {len(bad)} of {len(df)}" in warn[0]


def test_wav_with_truncated_data_chunk_is_an_error_not_silently_short(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(300.0, 1.0), SR)
    data = (tmp_path / "ok.wav").read_bytes()
    with pytest.raises(AudioError, match=r"cut\.wav: truncated"):
        decode_audio(data[: len(data) // 2], SR, str(tmp_path / "cut.wav"))


def test_log_and_tensorboard_writes_are_best_effort(tmp_path: Path, capsys) -> None:
    """A run folder that cannot be written (here: under a regular file; on S3, an error after
    its retries) costs one warning per writer, and training's own lines go on."""
    import numpy as np
    from speakertune.train.progress import Progress, TrialLog

    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = blocker / "run"
    show = Progress(str(run))
    show("epoch 1/2")
    show.record({"epoch": 1, "val_eer": 0.1})
    show("epoch 2/2")
    board = TrialLog(run)
    board.log_epoch({"train_loss": 1.0, "val_eer": 0.1}, 1)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    assert board.log_det({"cosine": (rng.normal(size=40) + labels, labels)}, 1) is None
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert out.count("warning: cannot write") == 2, out  # one per writer, not one per write
    assert show.safe.failed == 4 and board.safe.failed == 3  # mkdir, 2 lines, 1 record; 3 TB
