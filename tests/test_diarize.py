"""Diarization: RTTM I/O, DER against closed forms and a brute-force reference, AHC against
scikit-learn, VAD/windows, and end-to-end diarization of toy multi-speaker recordings."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score
from speakertune.commands import diarize as diarize_command
from speakertune.diarization.clustering import cluster_ahc
from speakertune.diarization.der import diarization_error
from speakertune.diarization.diarize import (
    DiarizationError,
    DiarizeConfig,
    affinity_matrix,
    diarize,
    energy_vad,
    sliding_windows,
)
from speakertune.diarization.rttm import RTTMError, Turn, read_rttm, write_rttm
from speakertune.testing import toy_speakers as ts
from test_decisions import setup  # noqa: F401 - a tiny calibrated best/, a fixture

CFG = {"features": ts.FEATS, "model": {"name": "tdnn", "channels": 64, "out_channels": 128},
       "pooling": {"name": "stats"}, "embed_dim": 32, "loss": {"name": "softmax"}}


@pytest.fixture(autouse=True)
def _one_thread():
    with ts.single_thread():
        yield


# ---------------------------------------------------------------- RTTM and DER

def test_rttm_roundtrip_and_bad_line(tmp_path):
    turns = [Turn("b", 1.5, 2.25, "x"), Turn("a", 0.0, 1.0, "y"), Turn("a", 3.0, 0.5, "x")]
    path = write_rttm(turns, tmp_path / "h.rttm")
    assert read_rttm(path) == sorted(turns, key=lambda t: (t.file, t.start))
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER a 1 0.0 1.0 <NA> <NA> x <NA> <NA>\nSPEAKER a 1 zero 1 <NA> <NA> y\n")
    with pytest.raises(RTTMError, match=r"bad\.rttm:2: start/duration"):
        read_rttm(bad)


def test_der_closed_form_with_collar():
    ref = [Turn("f", 0, 10, "A"), Turn("f", 10, 10, "B")]
    hyp = [Turn("f", 0, 12, "s1"), Turn("f", 12, 8, "s2")]
    # No collar: 2 s of B labelled as A's speaker out of 20 s.
    r0 = diarization_error(ref, hyp, collar=0.0)
    assert r0.confusion == pytest.approx(2.0) and r0.der == pytest.approx(0.1)
    assert r0.mapping["f"] == {"s1": "A", "s2": "B"}
    # 0.25 s collar around the boundaries 0, 10, 20: scored 19 s, confusion 10.25..12 = 1.75 s.
    r1 = diarization_error(ref, hyp, collar=0.25)
    assert r1.scored == pytest.approx(19.0) and r1.der == pytest.approx(1.75 / 19.0)
    # Shifted single speaker: 2 s missed + 2 s false alarm over 10 s.
    r2 = diarization_error([Turn("g", 0, 10, "A")], [Turn("g", 2, 10, "z")], collar=0.0)
    assert (r2.missed, r2.false_alarm, r2.der) == pytest.approx((2.0, 2.0, 0.4))


def _brute_force_der(ref, hyp, step=0.001):
    """Independent reference: 1 ms grid, best mapping by trying every permutation."""
    end = max(t.end for t in ref + hyp)
    grid = np.arange(0, end, step) + step / 2

    def act(turns, spk):
        return np.array([[any(t.start <= g < t.end for t in turns if t.speaker == s)
                          for s in spk] for g in grid]).reshape(len(grid), len(spk))

    rs, hs = sorted({t.speaker for t in ref}), sorted({t.speaker for t in hyp})
    ra, ha = act(ref, rs), act(hyp, hs)
    nr, nh = ra.sum(1), ha.sum(1)
    best = 0.0
    for perm in itertools.permutations(range(len(hs)), min(len(rs), len(hs))):
        correct = sum((ra[:, r] & ha[:, h]).sum() for r, h in zip(range(len(rs)), perm))
        best = max(best, correct)
    err = np.maximum(nr, nh).sum() - best
    return err / nr.sum()


def test_der_matches_brute_force_with_overlap():
    rng = np.random.default_rng(3)
    for _ in range(3):
        ref = [Turn("f", round(s, 3), round(d, 3), str(rng.integers(3)))
               for s, d in zip(rng.uniform(0, 4, 5), rng.uniform(0.2, 1.5, 5))]
        hyp = [Turn("f", round(s, 3), round(d, 3), "h" + str(rng.integers(3)))
               for s, d in zip(rng.uniform(0, 4, 5), rng.uniform(0.2, 1.5, 5))]
        assert diarization_error(ref, hyp, collar=0.0).der == pytest.approx(
            _brute_force_der(ref, hyp), abs=5e-3)


# ---------------------------------------------------------------- clustering, VAD, windows

def test_ahc_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 3
    truth = np.repeat(np.arange(4), 10)
    emb = centres[truth] + rng.standard_normal((40, 16))
    aff = affinity_matrix(emb)
    ours = cluster_ahc(aff, num_speakers=4)
    ref = AgglomerativeClustering(n_clusters=4, metric="precomputed", linkage="average")
    theirs = ref.fit_predict(1 - aff)
    assert adjusted_rand_score(ours, theirs) == pytest.approx(1.0)
    assert adjusted_rand_score(ours, truth) == pytest.approx(1.0)
    # Threshold mode stops where sklearn's distance_threshold does (distance = 1 - cosine).
    ours_t = cluster_ahc(aff, threshold=0.5)
    ref_t = AgglomerativeClustering(n_clusters=None, distance_threshold=0.5,
                                    metric="precomputed", linkage="average")
    assert adjusted_rand_score(ours_t, ref_t.fit_predict(1 - aff)) == pytest.approx(1.0)
    with pytest.raises(DiarizationError, match="at most one of threshold and num_speakers"):
        DiarizeConfig(threshold=0.5, num_speakers=2).validate()
    with pytest.raises(DiarizationError, match=r"max_speakers \(2\) < min_speakers \(3\)"):
        DiarizeConfig(min_speakers=3, max_speakers=2).validate()


def test_vad_and_windows():
    rng = np.random.default_rng(0)
    spk = ts.make_speakers(1)[0]
    silence = np.zeros(int(0.8 * ts.SR), np.float32)
    wave = np.concatenate([silence, ts.utterance(spk, 2.0, rng), silence,
                           ts.utterance(spk, 1.0, rng), silence])
    regions = energy_vad(wave, ts.SR)
    assert len(regions) == 2
    for (s, e), (ts_, te) in zip(regions, [(0.8, 2.8), (3.6, 4.6)]):
        assert abs(s - ts_) < 0.1 and abs(e - te) < 0.1
    win = sliding_windows(regions, window_s=1.0, hop_s=0.5)
    assert np.all(win[:, 1] - win[:, 0] <= 1.0 + 1e-9)
    for s, e in regions:  # every region covered from its start to its end
        inside = win[(win[:, 0] >= s - 1e-9) & (win[:, 1] <= e + 1e-9)]
        assert inside[:, 0].min() == pytest.approx(s) and inside[:, 1].max() == pytest.approx(e)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained():
    """Tiny x-vector TDNN + softmax head trained for a few seconds on 4 toy speakers."""
    from speakertune.models import build_encoder

    torch.manual_seed(0)
    speakers = ts.make_speakers(4)
    rng = np.random.default_rng(1)
    labels = [i for i in range(len(speakers)) for _ in range(8)]
    feats = [ts.features(ts.utterance(speakers[i], 2.0, rng)) for i in labels]
    enc = build_encoder(CFG["model"], CFG["pooling"], 40, CFG["embed_dim"])
    head = ts.train(enc, feats, labels, steps=60)
    return enc, head, speakers, feats, labels


def _recording(speakers, order, tmp_path, name, seed):
    """Concatenate fresh utterances, every other change without a pause (so windows straddle
    speaker changes); write WAV + reference RTTM."""
    from speakertune.data.audio import load_audio

    rng = np.random.default_rng(seed)
    parts, turns, t = [], [], 0.0
    for i, k in enumerate(order):
        gap = np.zeros(int((0.4 if i % 2 == 0 else 0.0) * ts.SR), np.float32)
        utt = ts.utterance(speakers[k], rng.uniform(2.0, 3.5), rng)
        parts += [gap, utt]
        t += len(gap) / ts.SR
        turns.append(Turn(name, round(t, 3), round(len(utt) / ts.SR, 3), f"S{k}"))
        t += len(utt) / ts.SR
    wav = tmp_path / f"{name}.wav"
    sf.write(wav, np.concatenate(parts), ts.SR)
    write_rttm(turns, tmp_path / f"{name}.rttm")
    return wav, load_audio(wav, ts.SR), read_rttm(tmp_path / f"{name}.rttm")


def test_diarization_beats_one_speaker_baseline(trained, tmp_path):
    enc, _, speakers, feats, labels = trained
    wav, wave, ref = _recording(speakers, [0, 1, 2, 0, 2, 1, 0, 2], tmp_path, "rec1", seed=7)
    dcfg = DiarizeConfig(window_s=1.0, hop_s=0.5, num_speakers=3)
    out = diarize(wave, ts.SR, enc, CFG, dcfg, file_id="rec1")
    assert out.info["clusters"] == 3 == len({t.speaker for t in out.turns})
    one = [Turn("rec1", s, e - s, "all") for s, e in out.speech]
    baseline = diarization_error(ref, one, collar=0.25).der
    result = diarization_error(ref, out.turns, collar=0.25)
    assert baseline > 0.4  # three talkers: one label must get well over a third wrong
    assert result.der < 0.5 * baseline and result.der < 0.25, (result.as_dict(), baseline)
    assert set(result.mapping["rec1"].values()) == {"S0", "S1", "S2"}  # one cluster per talker
    # A stopping threshold instead of the oracle count also finds three speakers.
    out_t = diarize(wave, ts.SR, enc, CFG, DiarizeConfig(window_s=1.0, hop_s=0.5, threshold=0.2),
                    file_id="rec1")
    assert out_t.info["clusters"] == 3
    assert diarization_error(ref, out_t.turns, collar=0.25).der < 0.5 * baseline

    # PLDA affinity from a backend fitted on training windows also finds the 3 speakers.
    import speakertune.scoring.backends  # noqa: F401  (registers the backends)
    from speakertune.registry import BACKENDS

    with torch.no_grad():
        train_emb = enc(torch.stack([f[s : s + 100] - f[s : s + 100].mean(0)
                                     for f in feats for s in (0, 80)])).numpy()
    plda = BACKENDS.build({"name": "plda", "lda_dim": 3}).fit(
        train_emb, np.repeat(np.asarray(labels), 2))
    dcfg_p = DiarizeConfig(window_s=1.0, hop_s=0.5, num_speakers=3, backend="plda")
    out_p = diarize(wave, ts.SR, enc, CFG, dcfg_p, file_id="rec1", backend=plda)
    assert out_p.info["clusters"] == 3
    assert diarization_error(ref, out_p.turns, collar=0.25).der < 0.5 * baseline


def test_diarize_job_writes_rttm_der_and_plot(trained, tmp_path):
    """`speakertune diarize` end to end from a saved checkpoint on a 2-speaker recording."""
    from speakertune.checkpoint import save_checkpoint

    enc, head, speakers, _, _ = trained
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, encoder=enc, loss=head, cfg=CFG, num_classes=len(speakers), feat_dim=40)
    wav, _, _ = _recording(speakers, [3, 1, 3, 1, 3], tmp_path, "rec2", seed=11)
    out_dir = tmp_path / "out"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    assert diarize_command.main([
        "--checkpoint", str(ckpt), "--audio", str(wav), str(broken), "--out", str(out_dir),
        "--window", "1.0", "--hop", "0.5", "--num-speakers", "2",
        "--reference", str(tmp_path / "rec2.rttm")]) == 0
    hyp = read_rttm(out_dir / "hypothesis.rttm")
    assert {t.speaker for t in hyp} == {"spk0", "spk1"}
    report = json.loads((out_dir / "der.json").read_text())
    ref_der = diarization_error(read_rttm(tmp_path / "rec2.rttm"), hyp, collar=0.25).der
    assert report["total"]["der"] == pytest.approx(ref_der) and ref_der < 0.25
    assert list(report["skipped"]) == [str(broken)]  # counted and reported, not dropped
    png = out_dir / "rec2.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def _shared_mean_windows(seed: int = 0):
    """Window embeddings as a trained encoder gives them: a large direction shared by every
    speaker (what the checkpoint's cosine removes), three speakers of 40/25/15 windows, and
    two noisy windows off the shared direction. Plus training embeddings to fit a backend."""
    from speakertune.scoring.backends import CosineBackend

    rng = np.random.default_rng(seed)
    dim = 32
    mean = rng.normal(size=dim)
    mean *= 6 / np.linalg.norm(mean)

    def voice():
        v = rng.normal(size=dim)
        return v / np.linalg.norm(v)

    train = np.concatenate([mean + voice() + 0.3 * rng.normal(size=(20, dim))
                            for _ in range(50)])  # fmt: skip
    emb = [mean + voice() + 0.35 * rng.normal(size=(n, dim)) for n in (40, 25, 15)]
    emb.append(0.6 * mean + rng.normal(size=(2, dim)))
    labels = np.repeat([0, 1, 2, 0], [40, 25, 15, 2])
    return np.concatenate(emb), labels, CosineBackend().fit(train)


def test_windows_are_scored_by_the_checkpoints_backend_and_outliers_do_not_take_a_speaker():
    """#27: raw cosine of windows with a shared mean direction, clustered into the oracle
    count, put 80 of 82 windows in one cluster; the checkpoint's cosine (training mean
    removed), scored as verification scores a pair, and small clusters absorbed into their
    nearest speaker recover the three speakers."""
    emb, truth, cosine = _shared_mean_windows()
    aff = affinity_matrix(emb, cosine)
    for i, j in ((0, 1), (0, 50), (3, 81)):  # the same number verification gives the pair
        assert aff[i, j] == pytest.approx(float(cosine.score(emb[i:i + 1], emb[j:j + 1])[0]))
    collapsed = cluster_ahc(affinity_matrix(emb), num_speakers=3)
    assert np.bincount(collapsed).max() >= 0.9 * len(emb)  # the defect, reproduced
    labels = cluster_ahc(aff, num_speakers=3, min_size=3)
    assert sorted(np.bincount(labels)) == pytest.approx([15, 25, 42], abs=3)
    assert adjusted_rand_score(truth, labels) > 0.7


def test_without_a_count_the_threshold_comes_from_the_calibration(setup, tmp_path, capsys):  # noqa: F811
    """#27 item 3: no --num-speakers or --threshold: AHC stops where a window pair's LLR is 0,
    calibrated on meetings of the checkpoint's dev speakers (window_calibration.json); where
    they cannot be read, where calibration.json gives LLR 0 (-b/a); --max-speakers bounds the
    count; a checkpoint without either is one line asking for a count."""
    utts = setup["corpus"].test["o"].utts.sort_values("utt")
    waves = [sf.read(u)[0] for u in utts.groupby("spk")["uri"].first()]
    sf.write(tmp_path / "meeting.wav", np.concatenate(waves * 2).astype(np.float32), 16000)
    argv = ["--audio", str(tmp_path / "meeting.wav")]

    def with_data(name, data):  # best/ whose config names this corpus
        shutil.copytree(setup["best"], tmp_path / name)
        cfg = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg | {"data": data}))
        return tmp_path / name

    best = with_data("best", setup["data"])
    assert diarize_command.main([*argv, "--checkpoint", str(best), "--out",
                                 str(tmp_path / "a")]) == 0
    fitted = json.loads((tmp_path / "a" / "window_calibration.json").read_text())["backends"]
    err = "".join(capsys.readouterr())
    assert f"score above {fitted['cosine']['threshold']:.4g})" in err and "dev speakers" in err
    # The same checkpoint where its corpus is not: calibration.json's LLR 0.
    moved = with_data("moved", setup["data"] | {"root": str(tmp_path / "gone")})
    blob = json.loads((moved / "calibration.json").read_text())
    assert diarize_command.main([*argv, "--checkpoint", str(moved), "--out",
                                 str(tmp_path / "b"), "--max-speakers", "1"]) == 0
    err = "".join(capsys.readouterr())
    assert f"score above {-blob['b'] / blob['a']:.4g})" in err and "unavailable" in err
    speakers = {t.speaker for t in read_rttm(tmp_path / "b" / "hypothesis.rttm")}
    assert len(speakers) == 1
    (moved / "calibration.json").unlink()
    code = diarize_command.main([*argv, "--checkpoint", str(moved), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "no calibration" in err and "pass --num-speakers" in err
