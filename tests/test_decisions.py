"""Calibrated decisions on real (synthetic-corpus) audio with a tiny checkpoint: best/ carries
calibration.json, the test-list report is calibrated on dev, and verify / enroll / identify
print LLRs that match an independent computation."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from e2e_sweep import write_test_list as _test_list
from speakertune import cli
from speakertune.checkpoint import save_checkpoint, save_val_scores
from speakertune.data.corpus import load_corpus
from speakertune.scoring.backends import CosineBackend, score_trials
from speakertune.scoring.calibration import fit_linear
from speakertune.scoring.embed import embed_utterances
from speakertune.scoring.metrics import eer
from speakertune.search import holdout
from speakertune.search import leaderboard as lb
from test_checkpoint import tiny_cfg, tiny_encoder


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    """A tiny checkpoint whose cosine backend, dev scores and ranked backend are made the way
    validation makes them (centred crops of trainer.val_max_seconds), exported as best/."""
    root = tmp_path_factory.mktemp("decisions")
    _test_list(tiny_corpus, root / "test.txt")
    data = {"corpus": "synthetic", "root": str(tiny_corpus), "speakers": 8,
            "utts_per_speaker": 4, "val_speakers": 2, "val_trials": 24,
            "test": {"o": {"trials": str(root / "test.txt")}}}
    corpus = load_corpus(data)
    cfg, crop = tiny_cfg(), tiny_cfg()["trainer"]["val_max_seconds"]
    enc = tiny_encoder(cfg)
    train = embed_utterances(enc, corpus.train, cfg, max_seconds=crop)
    utts = sorted(train)
    spk = dict(zip(corpus.train["utt"], corpus.train["spk"]))
    cos = CosineBackend().fit(np.stack([train[u] for u in utts]), np.array([spk[u] for u in utts]))
    val = embed_utterances(enc, corpus.val, cfg, max_seconds=crop)
    dev = score_trials(cos, val, corpus.trials)
    labels = corpus.trials["label"].to_numpy()
    ckpt = save_checkpoint(root / "ckpt", encoder=enc, loss=None, cfg=cfg, num_classes=4,
                           feat_dim=24, backends={"cosine": cos},
                           metrics={"val_eer_cosine": eer(dev, labels)[0]})
    save_val_scores(ckpt, {"cosine": dev}, labels)
    best = lb.export_best(pd.Series({"checkpoint": str(ckpt), "trial": "t1", "rank": 1}),
                          root / "best")
    return {"root": root, "data": data, "corpus": corpus, "ckpt": ckpt, "best": best,
            "cfg": cfg, "enc": enc, "cos": cos, "dev": dev, "labels": labels, "crop": crop}


def test_best_carries_a_dev_trained_calibration(setup):
    blob = json.loads((setup["best"] / "calibration.json").read_text())
    ref = fit_linear(setup["dev"], setup["labels"], 0.01)
    assert blob["backend"] == "cosine" and blob["p_target"] == 0.01
    assert blob["a"] == pytest.approx(ref.weights[0]) and blob["b"] == pytest.approx(ref.bias)
    assert blob["thresholds"]["bayes"] == pytest.approx(math.log(99))
    llr = blob["a"] * setup["dev"] + blob["b"]
    non = llr[setup["labels"] == 0]
    assert np.mean(non > blob["thresholds"]["far"]) <= blob["far"]
    assert blob["max_seconds"] == setup["crop"] and blob["dev"]["trials"] == len(llr)


def test_test_lists_report_calibrated_metrics(setup, tmp_path):
    df = pd.DataFrame([{"rank": 1, "trial": "t1", "best_epoch": 1,
                        "checkpoint": str(setup["ckpt"])}])
    lines: list[str] = []
    _, rows = holdout.evaluate_test_lists(df, setup["data"], top_k=1, backend="cosine",
                                          log=lines.append)
    cal = rows[0]["calibrated"]
    assert set(cal) == {"raw", "linear", "qmf"}
    assert cal["linear"]["eer"] == pytest.approx(cal["raw"]["eer"])  # linear keeps the ranking
    assert cal["raw"]["eer"] == pytest.approx(rows[0]["eer"])
    for m in cal.values():
        assert 0 <= m["min_dcf"] <= m["act_dcf"] + 1e-12 and m["cllr"] > 0
    assert "actDCF raw/linear/qmf" in lines[-1]
    text = holdout.write_test_results(rows, tmp_path, "cosine").read_text()
    assert "## Calibrated scores" in text and "| o | qmf |" in text


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _expected_llr(setup, a_uri: str, b_uri: str) -> float:
    """Cosine score of two files via embed_utterances + backend.score, then a * s + b."""
    df = pd.DataFrame({"utt": ["a", "b"], "uri": [a_uri, b_uri]})
    emb = embed_utterances(setup["enc"], df, setup["cfg"], max_seconds=setup["crop"])
    s = setup["cos"].score(emb["a"][None], emb["b"][None])[0]
    blob = json.loads((setup["best"] / "calibration.json").read_text())
    return blob["a"] * s + blob["b"]


def test_verify_enroll_identify(setup, tmp_path):
    test = setup["corpus"].test["o"].utts.sort_values("utt")
    by_spk = {s: list(g["uri"]) for s, g in test.groupby("spk")}
    (s0, u0), (s1, u1) = sorted(by_spk.items())
    best = str(setup["best"])
    code, out, _ = run("verify", u0[0], u0[1], "--model", best)
    llr = float(re.search(r"LLR: (-?[\d.]+)", out).group(1))
    assert code == 0 and llr == pytest.approx(_expected_llr(setup, u0[0], u0[1]), abs=1e-3)
    want = "accept" if llr > math.log(99) else "reject"
    assert f"decision: {want}" in out and "the bayes threshold: log((1-p)/p)" in out
    code, out, _ = run("verify", u0[0], u1[0], "--model", best, "--threshold", "far")
    assert code == 0 and "the far threshold: dev false-accept rate 0.01" in out

    gallery = tmp_path / "gallery"
    assert run("enroll", "alice", *u0[:2], "--model", best, "--gallery", str(gallery))[0] == 0
    assert run("enroll", "bob", u1[0], "--model", best, "--gallery", str(gallery))[0] == 0
    code, out, _ = run("identify", u0[3], "--model", best, "--gallery", str(gallery))
    ranked = re.findall(r"^\d  (\w+)  (-?[\d.]+)  (accept|reject)$", out, re.M)
    assert code == 0 and {r[0] for r in ranked} == {"alice", "bob"}
    values = [float(r[1]) for r in ranked]
    assert values == sorted(values, reverse=True)
    bob = values[[r[0] for r in ranked].index("bob")]
    assert bob == pytest.approx(_expected_llr(setup, u1[0], u0[3]), abs=1e-3)


def test_decision_errors_are_one_line(setup, tmp_path):
    wav = str(setup["corpus"].test["o"].utts["uri"].iloc[0])
    cases = [
        (("verify", wav, wav, "--model", str(tmp_path / "nope")), "no such model directory"),
        (("verify", wav, wav, "--model", str(setup["ckpt"])), "calibration.json: no calibration"),
        (("verify", wav, str(tmp_path / "x.wav"), "--model", str(setup["best"])),
         "x.wav: no such audio file"),
        (("identify", wav, "--model", str(setup["best"]), "--gallery", str(tmp_path)),
         "no enrolled speakers"),
        (("enroll", "a b", wav, "--model", str(setup["best"]), "--gallery", str(tmp_path)),
         "speaker name 'a b'"),
    ]
    for argv, msg in cases:
        code, out, err = run(*argv)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)
