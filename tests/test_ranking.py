"""A failing backend does not kill validation; the ranked backend is recorded with the
checkpoint and is what evaluation and diarization use when no backend is named."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from speakertune.checkpoint import load_checkpoint, save_checkpoint
from speakertune.ranking import checkpoint_backend, ranked_backend
from speakertune.scoring.verification import score_backends
from test_checkpoint import tiny_cfg, tiny_encoder


def _one_utt_per_speaker(seed: int = 0):
    """Training embeddings with a single utterance per speaker (PLDA cannot fit) and trials."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(9, 8)) * 3
    train = {f"t{s}": centres[s] + rng.normal(size=8) for s in range(6)}
    spk = {u: u for u in train}
    val = {f"v{s}_{k}": centres[6 + s] + rng.normal(size=8) for s in range(3) for k in range(3)}
    utts = sorted(val)
    pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1 :]]
    trials = pd.DataFrame({"enroll": [a for a, _ in pairs], "test": [b for _, b in pairs],
                           "label": [int(a[:2] == b[:2]) for a, b in pairs]})
    return train, spk, val, trials


def test_a_failing_backend_reports_nan_and_never_silently_switches(caplog, monkeypatch):
    """PLDA cannot fit: its metrics are NaN, cosine's are computed, and ``val_eer`` is the named
    backend's EER only (NaN when ranking on plda, cosine's when ranking on cosine)."""
    from speakertune.scoring import verification

    monkeypatch.setattr(verification, "_reported", set())  # a fresh process
    train, spk, val, trials = _one_utt_per_speaker()
    caplog.set_level(logging.WARNING, logger="speakertune.scoring.verification")
    res = score_backends(train, spk, val, trials, {"plda": {"lda_dim": 2}}, "plda")
    assert math.isnan(res.metrics["val_eer_plda"]) and math.isnan(res.metrics["val_min_dcf_plda"])
    assert "single embedding" in res.errors["plda"] and "\n" not in res.errors["plda"]
    assert "plda" not in res.backends and "plda" not in res.scores
    assert set(res.backends) == {"cosine"} and math.isfinite(res.metrics["val_eer_cosine"])
    assert math.isnan(res.metrics["val_eer"]) and res.ranked_backend is None
    assert math.isnan(res.metrics["val_eer_low"])
    # The next epoch fails the same way: the reason is logged once, not every epoch.
    again = score_backends(train, spk, val, trials, {"plda": {"lda_dim": 2}}, "plda")
    assert again.errors == res.errors
    logged = [r for r in caplog.records if "plda backend failed" in r.getMessage()]
    assert len(logged) == 1 and "single embedding" in logged[0].getMessage()
    cos = score_backends(train, spk, val, trials, {"plda": {"lda_dim": 2}}, "cosine",
                         {u: u[:2] for u in val})
    m = cos.metrics
    assert m["val_eer"] == m["val_eer_cosine"] and cos.ranked_backend == "cosine"
    assert m["val_eer_low"] <= m["val_eer"] <= m["val_eer_high"]


def test_best_of_is_refused_with_a_pointer():
    from speakertune.config import ConfigError

    train, spk, val, trials = _one_utt_per_speaker()
    with pytest.raises(ConfigError, match=r"trainer\.val_backend: 'best' .*name one"):
        score_backends(train, spk, val, trials, {}, "best")


def test_unknown_val_backend_is_still_a_config_error():
    from speakertune.config import ConfigError

    train, spk, val, trials = _one_utt_per_speaker()
    with pytest.raises(ConfigError, match="val_backend"):
        score_backends(train, spk, val, trials, {}, "euclid")


def test_ranked_backend_rules():
    m = {"val_eer_cosine": 0.0746, "val_eer_plda": 0.0407}
    assert ranked_backend(m) == "plda" and ranked_backend(m, "cosine") == "cosine"
    assert ranked_backend({**m, "val_eer_plda": math.nan}, "plda") is None  # no silent switch
    assert ranked_backend({"val_eer_cosine": 0.1, "val_eer_plda": 0.1}) == "cosine"  # tie
    assert ranked_backend({}) is None
    name, why = checkpoint_backend(m, {"trainer": {"val_backend": "cosine"}})
    assert name == "cosine" and "ranked on" in why and "4.07%" in why
    assert checkpoint_backend(None, None)[0] == "cosine"
    assert checkpoint_backend({**m, "ranked_backend": "cosine"}, {})[0] == "cosine"


def test_save_checkpoint_records_the_ranked_backend(tmp_path):
    cfg = tiny_cfg()
    cfg["trainer"]["val_backend"] = "best"
    metrics = {"epoch": 3, "val_eer_cosine": 0.0746, "val_eer_plda": 0.0407, "val_eer": 0.0407}
    d = save_checkpoint(tmp_path / "c", encoder=tiny_encoder(cfg), loss=None, cfg=cfg,
                        num_classes=2, feat_dim=24, metrics=metrics)
    assert "ranked_backend" not in metrics  # the caller's (Ray-reported) dict stays numeric
    assert json.loads((d / "metrics.json").read_text())["ranked_backend"] == "plda"
    assert load_checkpoint(d).ranked_backend()[0] == "plda"
    # An older checkpoint without the field: derived from its dev EERs and config.
    (d / "metrics.json").write_text(json.dumps(metrics))
    assert load_checkpoint(d).ranked_backend()[0] == "plda"


def test_diarize_checkpoint_uses_the_ranked_backend(tmp_path, capsys):
    from speakertune.diarization.diarize import DiarizeConfig, diarize_checkpoint
    from speakertune.scoring.backends import PLDABackend

    cfg = tiny_cfg()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    plda = PLDABackend(lda_dim=3).fit(np.repeat(centres, 5, 0) + 0.1 * rng.normal(size=(20, 8)),
                                      np.repeat(np.arange(4), 5))
    t = np.arange(4 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * np.where(t < 2, 150, 320) * t)).astype(np.float32)
    dcfg = DiarizeConfig(window_s=1.0, hop_s=0.5, num_speakers=2)
    for metrics, want in (({"val_eer_cosine": 0.2, "val_eer_plda": 0.1}, "plda"),
                          ({"val_eer_cosine": 0.1, "val_eer_plda": 0.2}, "cosine"),
                          (None, "cosine")):
        cfg["trainer"]["val_backend"] = want  # the named backend the trial was ranked on
        d = save_checkpoint(tmp_path / f"c_{want}_{metrics is None}", encoder=tiny_encoder(cfg),
                            loss=None, cfg=cfg, num_classes=4, feat_dim=24,
                            backends={"plda": plda}, metrics=metrics)
        out = diarize_checkpoint(wave, 16000, load_checkpoint(d), dcfg, file_id="rec")
        assert out.info["backend"] == want, (metrics, out.info)
        assert f"diarize rec: backend {want} (" in capsys.readouterr().err
    # Asked for explicitly, the choice is kept.
    out = diarize_checkpoint(wave, 16000, load_checkpoint(d), DiarizeConfig(
        window_s=1.0, hop_s=0.5, num_speakers=2, backend="plda"), verbose=False)
    assert out.info["backend"] == "plda" and out.info["backend_reason"] == "as asked"
