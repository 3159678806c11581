"""The front end on the train worker's device (``frontend.device``): the batched Kaldi features
and augmentations against torchaudio/NumPy references, the CPU-task path against the worker
path (same crops, noise and RIRs -> same features), crop-only reads and the bounded bank cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy import signal
from speakertune.config import ConfigError, resolve
from speakertune.data.audio import fit_length, load_audio, load_audio_crop
from speakertune.data.corpus import load_corpus
from speakertune.frontend.banks import BankCache
from speakertune.frontend.batch import check_device, frontend_mode
from speakertune.frontend.kaldi_batch import kaldi_batch
from speakertune.frontend.pipeline import FrontEnd, stack_rows
from speakertune.frontend.stream import build_train_dataset, worker_frontend
from torchaudio.compliance import kaldi

SR = 16000
DATA = {"corpus": "synthetic", "speakers": 8, "utts_per_speaker": 4, "val_speakers": 2,
        "min_seconds": 0.5, "max_seconds": 1.0}  # fmt: skip
ALL_ON = {"augment.noise_prob": 0.5, "augment.babble_prob": 0.5, "augment.reverb_prob": 0.5,
          "augment.speed_prob": 0.5, "augment.speed_as_new_speaker": True,
          "augment.specaug_prob": 0.5}  # fmt: skip


def trial_cfg(root, **flat):
    return resolve({"data": {**DATA, "root": str(root)}},
                   {"features.num_mel_bins": 24, "trainer.data_cpus": 1, **flat})  # fmt: skip


def rows_of(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"utt": df["utt"].to_numpy(), "uri": df["uri"].to_numpy(),
            "label": df["label"].to_numpy()}  # fmt: skip


@pytest.mark.parametrize("kind, fn, opts", [
    ("fbank", kaldi.fbank, {"num_mel_bins": 80}),
    ("fbank", kaldi.fbank, {"num_mel_bins": 40, "use_energy": True, "htk_compat": True,
                            "snip_edges": False, "raw_energy": False, "window_type": "hamming"}),
    ("mfcc", kaldi.mfcc, {"num_mel_bins": 30, "num_ceps": 20, "use_energy": True}),
    ("mfcc", kaldi.mfcc, {"num_ceps": 13, "htk_compat": True}),
    ("spectrogram", kaldi.spectrogram, {"snip_edges": False}),
])  # fmt: skip
def test_batched_features_equal_torchaudio_kaldi_row_by_row(kind, fn, opts):
    waves = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0)) * 3000
    ref = torch.stack([fn(w[None], sample_frequency=float(SR), **opts) for w in waves])
    out = kaldi_batch(kind, waves, SR, **opts)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4)


def test_task_path_equals_worker_path_and_batch_of_one(tiny_corpus):
    # Every augmentation on: the Ray Data task featurising its chunk, the train worker
    # featurising the raw crops it streams, and one utterance at a time must agree.
    cfg = trial_cfg(tiny_corpus, **ALL_ON)
    corpus = load_corpus(cfg["data"])
    batch = rows_of(corpus.train)
    task = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir, seed=5)
    assert task.mode == "cpu"
    out = task(batch, execution=1)
    wcfg = resolve(cfg, {"frontend.device": "worker"})
    raw = FrontEnd(wcfg, corpus.num_classes, corpus.noise, corpus.rir, seed=5)(batch, 1)
    assert raw["wave"].dtype == np.int16 and "feats" not in raw
    assert {0, 1, 2} <= set(raw["noise_kind"].tolist()) and (raw["rir"] >= 0).any()
    assert len(set(raw["speed"].tolist())) == 3  # unperturbed and both factors in one batch
    spec = {"cfg": wcfg, "noise_df": corpus.noise, "rir_df": corpus.rir, "storage_options": None}
    on_worker = worker_frontend(spec, torch.device("cpu"))(raw).numpy()
    assert np.allclose(on_worker, out["feats"], atol=1e-4)
    assert np.array_equal(raw["label"], out["label"])
    assert out["label"].max() >= corpus.num_classes  # speed "speakers"
    for i, r in enumerate(corpus.train.itertuples()):
        one, label = task.process(task.load(r.uri), r.label, task.rng_for(r.utt, 1))
        assert label == out["label"][i]
        err = np.abs(one - out["feats"][i]).max()
        assert err < 1e-2, (i, err)  # batch of one == row of a batch (float32 FFT sizes differ)


def _reference(fe: FrontEnd, row: dict, cfg: dict) -> np.ndarray:
    """One raw row through SciPy/NumPy (fftconvolve, np.tile) and torchaudio's kaldi.fbank."""
    aug, T = fe.augment, fe.samples
    x = row["wave"][:T].astype(np.float64) / 32768
    if row["rir"] >= 0:
        rir = load_audio(aug.rir_uris[row["rir"]], SR).astype(np.float64)
        d = int(np.argmax(np.abs(rir)))
        y = signal.fftconvolve(x, rir)[d : d + T]
        x = y * np.sqrt(np.mean(x**2) / np.mean(y**2))
    if row["noise_kind"]:
        uris = aug.noise_uris if row["noise_kind"] == 1 else aug.speech_uris
        mix = np.zeros(T)
        for i, off in zip(row["noise_idx"], row["noise_off"]):
            if i >= 0:
                n = load_audio(uris[i], SR).astype(np.float64)
                tiled = np.tile(n, -(-T // len(n)))
                start = int(np.float64(off) * (len(tiled) - T + 1))
                mix += tiled[start : start + T]
        gain = np.sqrt(np.mean(x**2) / (np.mean(mix**2) * 10 ** (row["snr"] / 10)))
        x = x + gain * mix
    f = kaldi.fbank(torch.tensor(x * 32768, dtype=torch.float32)[None], num_mel_bins=24,
                    dither=0.0, sample_frequency=float(SR)).numpy()  # fmt: skip
    f = f - f.mean(0)
    for m, (start, width) in enumerate(row["masks"]):
        if m < cfg["augment"]["specaug"]["freq_masks"]:
            f[:, start : start + width] = 0
        else:
            f[start : start + width] = 0
    return f


def test_batch_front_end_matches_a_numpy_reference(tiny_corpus):
    cfg = trial_cfg(tiny_corpus, **{**ALL_ON, "augment.speed_prob": 0.0,
                                    "augment.specaug_prob": 1.0, "augment.reverb_prob": 0.7})
    corpus = load_corpus(cfg["data"])
    fe = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir, seed=1)
    rows, skipped = fe.read(rows_of(corpus.train.iloc[:12]), 0)
    assert not skipped
    kinds = {(r["rir"] >= 0, int(r["noise_kind"])) for r in rows}
    assert len(kinds) >= 4  # dry, reverberant, noisy and babbled rows in one batch
    feats = fe.apply(stack_rows(rows)).numpy()
    for f, r in zip(feats, rows):
        assert np.abs(f - _reference(fe, r, cfg)).max() < 2e-3


def test_worker_mode_streams_int16_crops_through_ray(ray_local, tiny_corpus):
    cfg = trial_cfg(tiny_corpus, **ALL_ON)
    corpus = load_corpus(cfg["data"])
    fe = FrontEnd(cfg, corpus.num_classes, corpus.noise, corpus.rir, seed=3)
    expected = fe(rows_of(corpus.train), execution=0)
    wcfg = resolve(cfg, {"frontend.device": "worker"})
    ds = build_train_dataset(corpus, wcfg, epoch_seed=3)
    assert ds.worker_frontend is not None
    apply = worker_frontend(ds.worker_frontend, torch.device("cpu"))
    feats, labels = [], []
    for raw in ds.iter_batches(batch_size=8, batch_format="numpy"):
        assert raw["wave"].dtype == np.int16
        feats.append(apply(raw).numpy())
        labels += raw["label"].tolist()
    got = np.concatenate(feats)
    assert sorted(labels) == sorted(expected["label"].tolist())
    fp = sorted(np.round(got.astype(np.float64).sum(axis=(1, 2)), 2).tolist())
    ref = sorted(np.round(expected["feats"].astype(np.float64).sum(axis=(1, 2)), 2).tolist())
    assert np.allclose(fp, ref, atol=0.05)  # the same utterances, crops and augmentations
    ds.skip_counter.close()


def test_frontend_device_values_and_the_gpu_error(tiny_corpus):
    cfg = trial_cfg(tiny_corpus)
    assert frontend_mode(cfg) == "cpu"
    assert frontend_mode(resolve(cfg, {"frontend.device": "worker"})) == "worker"
    with pytest.raises(ConfigError, match=r"frontend\.device: 'tpu' is not one of"):
        frontend_mode(resolve(cfg, {"frontend.device": "tpu"}))
    with pytest.raises(ConfigError, match="needs trainer.use_gpu"):
        frontend_mode(resolve(cfg, {"frontend.device": "gpu"}))
    assert frontend_mode(resolve(cfg, {"trainer.use_gpu": True})) == "worker"  # auto
    # gpu is the worker's to check: the driver on a CPU head (or an autoscaling cluster before
    # its first GPU node) accepts it, and a worker without CUDA refuses it in one line
    gpu = resolve(cfg, {"frontend.device": "gpu", "trainer.use_gpu": True})
    assert frontend_mode(gpu) == "worker"
    with pytest.raises(ConfigError, match=r"frontend\.device: gpu, but the train worker on "
                                          r"\S+ has no CUDA device") as exc:
        worker_frontend({"cfg": gpu, "noise_df": None, "rir_df": None,
                         "storage_options": None}, torch.device("cpu"))
    assert "\n" not in str(exc.value)
    check_device(gpu, torch.device("cuda", 0))  # a CUDA worker passes
    check_device(resolve(cfg, {"frontend.device": "worker"}), torch.device("cpu"))


def test_bank_cache_evicts_least_recently_used_by_size():
    loads = []

    def load(uri: str) -> np.ndarray:
        loads.append(uri)
        return np.zeros(int(uri.split("-")[1]) * 2**18, np.float32)  # n MB

    cache = BankCache(load, cap_mb=3)
    cache["a-1"], cache["b-1"], cache["c-1"]  # noqa: B018 - 3 MB: all fit
    cache["a-1"]  # noqa: B018 - a is now the most recently used
    assert cache.nbytes == 3 * 2**20 and loads == ["a-1", "b-1", "c-1"]
    cache["d-2"]  # noqa: B018 - 2 MB more: the two least recently used (b, c) go
    assert list(cache.items) == ["a-1", "d-2"] and cache.nbytes == 3 * 2**20
    cache["b-1"]  # noqa: B018 - evicted earlier: decoded again, a goes
    assert loads[-1] == "b-1" and list(cache.items) == ["d-2", "b-1"]
    assert cache["e-4"].nbytes == 4 * 2**20 and "e-4" not in cache.items  # over the cap alone


def test_crop_reads_equal_full_decode_local_s3_and_m4a(tmp_path, s3_server):
    x = (np.random.default_rng(0).standard_normal(24000) * 3000).astype(np.int16)
    for ext in ("wav", "flac"):
        sf.write(tmp_path / f"a.{ext}", x, SR, subtype="PCM_16")
    sf.write(tmp_path / "r.wav", x, 8000)  # another rate: its window read and resampled
    bucket = s3_server.make_bucket("crops")
    s3_server.upload_dir(tmp_path, bucket, "c")
    uris = [str(tmp_path / n) for n in ("a.wav", "a.flac")]
    uris += [f"s3://{bucket}/c/{n}" for n in ("a.wav", "a.flac")]
    opts = s3_server.storage_options
    for uri in uris:
        for length in (16000, 30000):  # a crop, and a file shorter than the crop (tiled)
            got = load_audio_crop(uri, SR, length, np.random.default_rng(7), opts)
            ref = fit_length(load_audio(uri, SR, opts), length, np.random.default_rng(7))
            assert np.array_equal(got, ref), (uri, length)
    # 8 kHz: the crop is the window of ceil(length / 2) + 1 file samples at the drawn offset,
    # resampled; away from the window's edges it is the whole decode's audio at 2 x offset
    full = load_audio(tmp_path / "r.wav", SR)
    for length in (16000, 30000):
        got = load_audio_crop(tmp_path / "r.wav", SR, length, np.random.default_rng(7))
        offset = int(np.random.default_rng(7).integers(0, len(x) - (length // 2 + 1) + 1))
        inner = slice(200, length - 200)  # the resampling filter's reach: ~20 file samples
        np.testing.assert_allclose(got[inner], full[2 * offset:][inner], atol=2e-3)
    av = pytest.importorskip("av")
    from test_m4a import write_m4a

    assert av is not None
    m4a = write_m4a(tmp_path / "t.m4a", x.astype(np.float32) / 32768)
    got = load_audio_crop(m4a, SR, 8000, np.random.default_rng(1))
    assert np.array_equal(got, fit_length(load_audio(m4a, SR), 8000, np.random.default_rng(1)))
