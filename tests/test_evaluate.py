"""The evaluation job end to end: real wav files, a saved checkpoint, scores, DET and t-SNE."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from sklearn.metrics import roc_curve
from speakertune.checkpoint import save_checkpoint
from speakertune.commands import evaluate as evaluate_command
from speakertune.data.audio import load_audio
from speakertune.data.manifest import read_manifest, write_manifest
from speakertune.data.trials import write_trials
from speakertune.frontend.pipeline import extract_features
from speakertune.scoring.evaluate import identify
from test_checkpoint import tiny_cfg, tiny_encoder

SR = 16000


def reference_eer(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    d = (1 - tpr) - fpr
    i = int(np.flatnonzero(d <= 0)[0])
    a = d[i - 1] / (d[i - 1] - d[i])
    return fpr[i - 1] + a * (fpr[i] - fpr[i - 1])


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def voice(f0: float, seconds: float, rng) -> np.ndarray:
    """A harmonic tone whose pitch is the 'speaker', with random phases and noise."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
    return (0.2 * x + 0.01 * rng.normal(size=t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    rows = []
    for s in range(10):  # speakers 0-5 are in trials, 6-9 form the development set
        for u in range(3):
            path = root / f"s{s}_{u}.wav"
            sf.write(path, voice(100 + 45 * s, rng.uniform(0.8, 1.2), rng), SR)
            rows.append((f"s{s}_{u}", f"s{s}", str(path), 1.0, SR))
    (root / "s5_2.wav").write_bytes(b"corrupt")  # one undecodable trial utterance
    man = pd.DataFrame(rows, columns=["utt", "spk", "uri", "duration_s", "sample_rate"])
    write_manifest(man, str(root / "manifest.parquet"))
    trial_utts = man[man["spk"].isin([f"s{s}" for s in range(6)])]
    pairs = [(a.utt, b.utt, int(a.spk == b.spk)) for a in trial_utts.itertuples()
             for b in trial_utts.itertuples() if a.utt < b.utt]
    pairs.append(("s0_0,s0_1", "s0_2", 1))  # a two-utterance enrollment
    write_trials(pd.DataFrame(pairs, columns=["enroll", "test", "label"]), str(root / "trials"))
    cfg = tiny_cfg()
    save_checkpoint(root / "ckpt", encoder=tiny_encoder(cfg), loss=None, cfg=cfg,
                    num_classes=4, feat_dim=24)
    return root, len(pairs), sum("s5_2" in (e.split(",") + [t]) for e, t, _ in pairs)


def run_job(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = evaluate_command.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_job_scores_plots_and_reports(corpus, tmp_path):
    root, n_trials, n_bad = corpus
    code, out, err = run_job("--checkpoint", str(root / "ckpt"),
                             "--manifest", str(root / "manifest.parquet"),
                             "--trials", str(root / "trials"), "--backend", "both",
                             "--asnorm-cohort", "3", "--out", str(tmp_path / "res"),
                             "--batch-size", "1")  # no batch cropping: exact reference below
    assert code == 0, err
    summary = json.loads((tmp_path / "res" / "metrics.json").read_text())
    systems = ["cosine", "cosine+asnorm", "plda", "plda+asnorm"]
    assert sorted(summary["metrics"]) == systems
    # trials touching the corrupt utterance are dropped and counted, not silently lost
    assert list(summary["utterances_skipped"]) == ["s5_2"]
    assert summary["trials_skipped"] == n_bad > 0
    assert summary["trials_scored"] == n_trials - n_bad
    for name in systems:
        row = [ln for ln in out.splitlines() if ln.startswith(f"| {name} |")]
        assert row, out
        table = pd.read_csv(tmp_path / "res" / f"scores_{name.replace('+', '_')}.txt",
                            sep=" ", names=["enroll", "test", "label", "score"])
        assert len(table) == n_trials - n_bad
        ref = reference_eer(table["score"], table["label"])
        assert summary["metrics"][name]["eer"] == pytest.approx(ref, abs=1e-5)
        assert f"{100 * ref:.2f}" in row[0]
    # scores pair the right utterances: recompute cosine one utterance at a time
    man = read_manifest(str(root / "manifest.parquet"))
    cfg = tiny_cfg()
    enc = tiny_encoder(cfg)
    with torch.no_grad():
        emb = {u: enc(extract_features(load_audio(p, SR), cfg)[None].float())[0].double().numpy()
               for u, p in zip(man["utt"], man["uri"]) if u != "s5_2"}
    dev_mean = np.mean([v for u, v in emb.items() if int(u[1]) >= 6], axis=0)
    table = pd.read_csv(tmp_path / "res" / "scores_cosine.txt", sep=" ",
                        names=["enroll", "test", "label", "score"])
    for e, t, s in table[["enroll", "test", "score"]].sample(20, random_state=0).itertuples(
            index=False):
        a = np.mean([unit(emb[u] - dev_mean) for u in e.split(",")], axis=0)
        assert s == pytest.approx(float(unit(a) @ unit(emb[t] - dev_mean)), abs=1e-5)
    for png in ("det.png", "tsne.png"):
        assert (tmp_path / "res" / png).read_bytes()[:4] == b"\x89PNG"
    assert "embedded" in err  # progress was shown
    assert "identification top-1" in out


def test_job_errors_are_one_line(corpus, tmp_path):
    root = corpus[0]
    (tmp_path / "t").write_text("s0_0 nobody 1\n")
    code, _, err = run_job("--checkpoint", str(root / "ckpt"),
                           "--manifest", str(root / "manifest.parquet"),
                           "--trials", str(tmp_path / "t"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.strip().splitlines() == [f"error: {tmp_path / 't'}: 1 utterances not in the "
                                        "manifest (first: 'nobody')"]


def test_identification_top_k():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    emb = {f"{s}_{u}": centres[s] + 0.01 * rng.normal(size=8) for s in range(6) for u in range(4)}
    spk = {u: u.split("_")[0] for u in emb}
    acc = identify(emb, spk)
    assert acc == {1: 1.0, 5: 1.0}
    noisy = {u: rng.normal(size=8) for u in emb}  # no speaker information: near chance
    assert identify(noisy, spk)[1] < 0.6
