"""The Ray Train trainer on a real local Ray cluster: a 2-worker gloo run of a tiny TDNN that
loses a worker mid-run, then checks on what it left behind (metrics, checkpoints, TensorBoard).

One run serves several tests (module fixture) to stay inside the suite's time budget.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from speakertune.train import driver
from speakertune.train.worker import REPORT_KEYS

pytestmark = pytest.mark.slow
EPOCHS = 3
FAIL_AT = 2


def tiny_cfg(root: Path, **trainer_overrides) -> dict:
    t = {
        "epochs": EPOCHS, "batch_size": 4, "num_workers": 2, "cpus_per_worker": 0.5,
        "data_cpus": 1, "val_max_seconds": 2.0, "plda_utts": 24,
    }
    t.update(trainer_overrides)
    return {
        "data": {"corpus": "synthetic", "root": str(root), "speakers": 8, "utts_per_speaker": 4,
                 "val_speakers": 2, "val_trials": 200, "min_seconds": 0.5, "max_seconds": 1.0},
        "features": {"name": "fbank", "num_mel_bins": 24},
        "model": {"name": "tdnn", "channels": 32, "out_channels": 64},
        "pooling": {"name": "stats"},
        "embed_dim": 16,
        "loss": {"name": "aam_softmax", "margin": 0.2, "scale": 30.0},
        "optimizer": {"name": "adam", "lr": 0.005},
        "scheduler": {"name": "cosine", "warmup_epochs": 1, "margin_warmup_epochs": 1},
        "trainer": t,
        "backend": {"plda": {"lda_dim": 4}},
    }


@pytest.fixture(scope="module")
def crashed_run(ray_local, tiny_corpus, tmp_path_factory):
    """2 workers, 3 epochs; the last worker process dies (os._exit) in epoch 2."""
    storage = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(tiny_corpus, fail_at_epoch=FAIL_AT)
    # Augmentation and features on the train workers (CPU here): the Ray Data tasks stream raw
    # int16 crops, so this run also covers the device front end end to end.
    cfg.update(frontend={"device": "worker"}, augment={"noise_prob": 0.5, "reverb_prob": 0.5})
    out = driver.train(cfg, storage_path=str(storage), name="crash")
    return driver.resolved(cfg), out


def test_reports_both_eers_every_epoch(crashed_run):
    cfg, out = crashed_run
    history = out["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for h in history:
        assert set(REPORT_KEYS) <= set(h), set(REPORT_KEYS) - set(h)
        for key in ("val_eer_cosine", "val_eer_plda", "val_min_dcf_cosine", "val_min_dcf_plda"):
            assert 0.0 <= h[key] <= 1.0, (key, h[key])  # minDCF is normalised: at most 1
        assert h["val_eer"] == h["val_eer_cosine"]  # the named default backend, not a best-of
        # its 95% CI over 2 dev speakers (a percentile CI need not contain the point estimate)
        assert 0.0 <= h["val_eer_low"] <= h["val_eer_high"] <= 1.0
        assert np.isfinite(h["train_loss"]) and 0.0 <= h["train_acc"] <= 1.0
        # 6 training speakers x 4 utterances over 2 workers in batches of 4: 3 steps each.
        assert h["train_steps"] == 24 // 2 // 4
        assert h["skipped_utterances"] == 0 and h["val_skipped_utterances"] == 0
    # Parameter count from an encoder built independently of the run.
    from speakertune.frontend.features import feature_dim
    from speakertune.models import build_encoder, count_parameters

    enc = build_encoder(cfg["model"], cfg["pooling"], feature_dim(cfg), cfg["embed_dim"])
    assert history[0]["num_params"] == count_parameters(enc)
    # The learning rate follows the warm-up + cosine schedule down to its floor.
    assert history[-1]["lr"] == pytest.approx(0.005 * 0.01)
    assert out["val_eer"] == history[-1]["val_eer"]


def test_worker_crash_resumes_at_the_next_epoch(crashed_run):
    _, out = crashed_run
    run = Path(out["run_dir"])
    assert (run / ".fail_injected").read_text().startswith("worker rank 1 killed in epoch 2")
    log = (run / "progress.log").read_text().splitlines()
    assert "resumed from checkpoint after epoch 1" in log
    epochs_run = [line.split()[1] for line in log if line.startswith("epoch ")]
    assert epochs_run == ["1/3", "2/3", "3/3"]  # epoch 1 was not trained twice
    assert out["epoch"] == EPOCHS
    assert Path(out["checkpoint"]).name == f"checkpoint_epoch_{EPOCHS:04d}"


def _sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    # Every operating point: the default drop_intermediate=True removes the points along a
    # straight run of the ROC, which can leave the reference several trials off the crossing.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def test_checkpoint_reload_reproduces_validation_eer(crashed_run):
    from speakertune.checkpoint import load_checkpoint
    from speakertune.data.corpus import load_corpus
    from speakertune.scoring.backends import score_trials
    from speakertune.scoring.embed import embed_features
    from speakertune.scoring.embed import load_features as load_eval_features
    from speakertune.scoring.metrics import eer

    cfg, out = crashed_run
    ck = load_checkpoint(out["checkpoint"])
    assert ck.train_state["epoch"] == EPOCHS and ck.metrics["epoch"] == EPOCHS
    corpus = load_corpus(cfg["data"])
    feats = load_eval_features(corpus.val, cfg, max_seconds=cfg["trainer"]["val_max_seconds"])
    emb = embed_features(ck.encoder, feats.feats)  # one process now, two workers in training
    labels = corpus.trials["label"].to_numpy()
    for name in ("cosine", "plda"):
        scores = score_trials(ck.backends[name], emb, corpus.trials)
        assert eer(scores, labels)[0] == pytest.approx(out[f"val_eer_{name}"], abs=1e-9)
        # Independent reference: scikit-learn's ROC, within one trial's worth of resolution.
        n = min(int(labels.sum()), int((1 - labels).sum()))
        gap = abs(_sklearn_eer(scores, labels) - out[f"val_eer_{name}"])
        assert gap <= 1.0 / n + 1e-12  # one trial, up to float rounding


def test_saved_validation_scores_give_the_reported_eers(crashed_run):
    """Each checkpoint carries its epoch's trial scores (what the sweep's DET plot shows): their
    EER is exactly the reported one for every kept epoch."""
    from speakertune.checkpoint import VAL_SCORES, load_val_scores
    from speakertune.data.corpus import load_corpus
    from speakertune.scoring.metrics import eer

    cfg, out = crashed_run
    by_epoch = {h["epoch"]: h for h in out["history"]}
    ckpts = sorted(Path(out["run_dir"]).glob("checkpoint_epoch_*"))
    assert ckpts and Path(out["checkpoint"]) in ckpts
    labels_ref = load_corpus(cfg["data"]).trials["label"].to_numpy()
    for ck in ckpts:
        epoch = int(ck.name.rsplit("_", 1)[1])
        with np.load(ck / VAL_SCORES, allow_pickle=False) as z:
            assert set(z.files) == {"labels", "scores_cosine", "scores_plda"}
            np.testing.assert_array_equal(z["labels"], labels_ref)
        for name in ("cosine", "plda"):
            scores, labels = load_val_scores(str(ck), name)
            assert scores.shape == labels.shape == labels_ref.shape
            assert eer(scores, labels)[0] == by_epoch[epoch][f"val_eer_{name}"], (ck, name)
            # scikit-learn's ROC as the independent reference, to one trial's resolution
            n = min(int(labels.sum()), int((1 - labels).sum()))
            gap = abs(_sklearn_eer(scores, labels) - by_epoch[epoch][f"val_eer_{name}"])
            assert gap <= 1 / n + 1e-12  # one trial, up to float rounding


def _read_events(path: Path):
    """Records of a TensorBoard event file (TFRecord framing, CRCs checked) as Event protos,
    parsed with tensorboardX's own protobuf definitions."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == masked(body)
        events.append(Event.FromString(body))
        pos += 16 + length
    return events


def test_tensorboard_event_file_has_the_scalars(crashed_run):
    _, out = crashed_run
    files = sorted((Path(out["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    scalars: dict[str, dict[int, float]] = {}
    images = set()
    for f in files:  # one file per (re)started rank-0 worker
        for ev in _read_events(f):
            for v in ev.summary.value:
                if v.HasField("image"):
                    images.add(v.tag)
                else:
                    scalars.setdefault(v.tag, {})[ev.step] = v.simple_value
    history = {h["epoch"]: h for h in out["history"]}
    for tag, key in (("train/loss", "train_loss"), ("val/eer_cosine", "val_eer_cosine"),
                     ("val/eer_plda", "val_eer_plda"), ("train/lr", "lr"),
                     ("train/accuracy", "train_acc")):
        assert sorted(scalars[tag]) == list(range(1, EPOCHS + 1)), tag
        for epoch, value in scalars[tag].items():
            assert value == pytest.approx(history[epoch][key], rel=1e-5, abs=1e-7), (tag, epoch)
    assert "val/det" in images
    assert (Path(out["run_dir"]) / "det.png").stat().st_size > 1000


def test_bad_config_fails_on_the_driver(ray_local, tiny_corpus, tmp_path):
    from speakertune.config import ConfigError

    cfg = tiny_cfg(tiny_corpus)
    cfg["optimizer"] = {"name": "lamb", "lr": 0.1}
    with pytest.raises(ConfigError, match="optimizer.name"):
        driver.make_trainer(cfg, storage_path=str(tmp_path), name="bad")
    assert not (tmp_path / "bad").exists()  # nothing started


def test_trial_resources_counts_workers_and_data_cpus():
    cfg = {"trainer": {"num_workers": 4, "cpus_per_worker": 2, "data_cpus": 3,
                       "use_gpu": True, "gpus_per_worker": 0.5}}
    assert driver.trial_resources(cfg) == {"CPU": 11.0, "GPU": 2.0}
    assert driver.trial_resources({})["GPU"] == 0.0
