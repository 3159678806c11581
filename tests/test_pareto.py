"""Multi-objective search (Pareto front, pareto.png) and large-margin fine-tuning.

The end-to-end checks use the suite's one real-Ray sweep (``e2e_sweep``), whose space ranks on
two objectives and asks for fine-tuning of its best trial.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from speakertune.search import leaderboard as lb
from speakertune.search import space as sp
from speakertune.search.finetune import finetune_config, finetune_settings
from speakertune.search.objectives import pareto_mask

REPO = Path(__file__).resolve().parents[1]


def _brute_force_front(v: np.ndarray) -> list[bool]:
    """Row i is optimal iff no row j is <= everywhere and < somewhere (NaN rows never are)."""
    out = []
    for i, a in enumerate(v):
        if np.isnan(a).any():
            out.append(False)
            continue
        dominated = any(
            not np.isnan(b).any() and all(b <= a) and any(b < a)
            for j, b in enumerate(v) if j != i
        )
        out.append(not dominated)
    return out


def test_pareto_mask_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for n, k in itertools.product([1, 2, 7, 30], [2, 3]):
        v = rng.integers(0, 5, size=(n, k)).astype(float)  # small ints: many ties
        v[rng.random(n) < 0.1, 0] = np.nan
        assert pareto_mask(v).tolist() == _brute_force_front(v), v
    # closed form: on a strictly decreasing curve every point is optimal
    x = np.linspace(0, 1, 9)
    assert pareto_mask(np.c_[x, 1 - x]).all()
    assert pareto_mask(np.array([[0.1, 5], [0.2, 3], [0.3, 4]])).tolist() == [True, True, False]


BASE_SPACE = {"params": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}


@pytest.mark.parametrize("objectives,message", [
    (["dev_eer", "flops"], "search.objectives: unknown objective 'flops'; known: dev_eer"),
    (["params", "latency_ms"], "search.objectives: must include dev_eer"),
    ("dev_eer", "search.objectives: must be a list of at least two"),
    (["dev_eer", "dev_eer"], "search.objectives: duplicate objective"),
])
def test_bad_objectives_name_the_key(objectives, message: str) -> None:
    with pytest.raises(sp.SpaceError) as info:
        sp.parse_space({**BASE_SPACE, "search": {"objectives": objectives}}, source="x.yaml")
    assert str(info.value).startswith("x.yaml: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_finetune_section_is_validated() -> None:
    s = sp.parse_space({**BASE_SPACE, "finetune": {"margin": 0.4}}, source="x.yaml")
    assert s.finetune["margin"] == 0.4 and s.finetune["epochs"] == 2  # over DEFAULTS
    assert sp.parse_space(BASE_SPACE, source="x.yaml").finetune is None
    for bad, msg in [({"marginn": 0.4}, "x.yaml: finetune.marginn: unknown key"),
                     ({"crop_seconds": 0}, "x.yaml: finetune.crop_seconds: must be a positive"),
                     ({"epochs": 1.5}, "x.yaml: finetune.epochs: must be an integer >= 1")]:
        with pytest.raises(sp.SpaceError, match=msg):
            sp.parse_space({**BASE_SPACE, "finetune": bad}, source="x.yaml")


def test_finetune_config_overrides_only_the_recipe_keys() -> None:
    from speakertune.config import resolve

    cfg = resolve({"loss": {"name": "am_softmax", "margin": 0.2}, "optimizer": {"lr": 2e-3}})
    s = finetune_settings({"margin": 0.45, "crop_seconds": 4, "lr_scale": 0.05, "epochs": 3})
    out, changes = finetune_config(cfg, s, "/ck/best")
    assert out["loss"]["margin"] == 0.45 and out["data"]["min_seconds"] == 4.0
    assert out["data"]["max_seconds"] == 4.0 and out["trainer"]["epochs"] == 3
    assert math.isclose(out["optimizer"]["lr"], 1e-4) and out["trainer"]["init_checkpoint"]
    assert out["model"] == cfg["model"] and cfg["loss"]["margin"] == 0.2  # input untouched
    assert any(c.startswith("loss.margin: 0.2 -> 0.45") for c in changes)
    soft, changes = finetune_config(resolve({"loss": {"name": "softmax"}}), s, "/ck")
    assert "margin" not in soft["loss"] and any("no additive margin" in c for c in changes)


def _record(tid: str, eer: float, params: int) -> lb.TrialRecord:
    hist = pd.DataFrame({"epoch": [1], "val_eer": [eer], "val_eer_low": [eer - 0.01],
                         "val_eer_high": [eer + 0.01], "num_params": [params],
                         "latency_ms": [params / 1000], "checkpoint_path": [f"/ck/{tid}"]})
    return lb.TrialRecord(tid, {"model.channels": params}, hist)


def test_leaderboard_marks_the_front_and_plots_it(tmp_path: Path) -> None:
    recs = [_record("a", 0.10, 900), _record("b", 0.20, 300), _record("c", 0.25, 500),
            _record("d", 0.30, 100), lb.TrialRecord("e", {}, pd.DataFrame(), "ERROR", error="x")]
    df = lb.rank_trials(recs, objectives=["dev_eer", "params"])
    assert list(df["trial"]) == ["a", "b", "c", "d", "e"]  # still ranked on dev EER
    assert list(df["pareto"]) == [True, True, False, True, False]  # c: b is better in both
    assert list(df["latency_ms"][:4]) == [0.9, 0.3, 0.5, 0.1]
    md = lb.to_markdown(df)
    assert md.splitlines()[0].endswith("| pareto |") and "| yes |" in md
    png = lb.plot_pareto(df, ["dev_eer", "params"], tmp_path / "pareto.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    single = lb.rank_trials(recs)  # a single-objective sweep: no pareto column
    assert "pareto" not in single and "pareto" not in lb.to_markdown(single)


def test_finetune_cli_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    for args, msg in [(["--checkpoint", str(tmp_path)], "not a checkpoint directory"),
                      (["--checkpoint", str(tmp_path), "--lr-scale", "0"],
                       "finetune.lr_scale: must be a positive number")]:
        out = subprocess.run([sys.executable, str(REPO / "jobs/finetune.py"), *args],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and msg in lines[0], out.stderr


@pytest.mark.slow
def test_multi_objective_sweep_then_finetune(e2e_sweep):
    """The end-to-end sweep ranks on two objectives (dev EER, parameters) and its space asks
    for fine-tuning of the best trial with a larger margin and fixed 1.5 s crops."""
    from speakertune.checkpoint import load_checkpoint
    from speakertune.models import build_encoder

    out, result = e2e_sweep.out, e2e_sweep.result
    df = pd.read_csv(out / "leaderboard.csv")
    assert len(df) == 3 and result.num_errors == 0
    assert (df["latency_ms"] > 0).all()  # measured in every trial
    expect = _brute_force_front(df[["val_eer", "num_params"]].to_numpy(float))
    assert df["pareto"].tolist() == expect and any(expect)
    assert "| pareto |" in (out / "leaderboard.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    # fine-tuning of the best trial: its report, and a run that really changed margin and crop
    report = json.loads((out / "finetune.json").read_text())
    assert len(report) == 1 and report[0]["label"] == str(df["trial"][0])
    row = report[0]
    src = load_checkpoint(row["checkpoint"])
    ft = load_checkpoint(row["finetuned"])
    assert row["before"]["dev"]["eer"] == pytest.approx(df["val_eer"][0])
    assert row["before"]["dev"]["eer"] == pytest.approx(src.metrics["val_eer"])
    assert row["after"]["dev"]["eer"] == pytest.approx(ft.metrics["val_eer"])
    a = row["after"]["dev"]
    assert a["low"] <= a["eer"] <= a["high"]
    assert ft.cfg["loss"]["margin"] == 0.4 and src.cfg["loss"]["margin"] == 0.2
    assert ft.cfg["data"]["min_seconds"] == ft.cfg["data"]["max_seconds"] == 1.5
    assert ft.cfg["optimizer"]["lr"] == pytest.approx(0.1 * src.cfg["optimizer"]["lr"])
    # started from the checkpoint, not from scratch: the weights stayed near the source's,
    # far nearer than the seeded fresh initialisation a run without it would start from
    torch.manual_seed(int(ft.cfg["trainer"]["seed"]))
    fresh = build_encoder(ft.cfg["model"], ft.cfg["pooling"], ft.feat_dim, ft.cfg["embed_dim"])

    def dist(m1: torch.nn.Module, m2: torch.nn.Module) -> float:
        # weights only: BatchNorm running statistics move with every batch, whatever the LR
        p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
        return sum(float((p1[k] - p2[k]).detach().norm()) for k in p1)

    moved = dist(ft.encoder, src.encoder)
    assert 0 < moved < 0.5 * dist(fresh, src.encoder), (moved, dist(fresh, src.encoder))
    md = (out / "finetune.md").read_text()
    assert "| dev |" in md and "loss.margin: 0.2 -> 0.4" in md and "%" in md


def test_init_checkpoint_loads_encoder_and_a_fitting_head(tmp_path: Path) -> None:
    """The worker's start from ``trainer.init_checkpoint`` (fine-tuning), without Ray."""
    import types

    from speakertune.checkpoint import save_checkpoint
    from speakertune.config import resolve
    from speakertune.losses import build_loss
    from speakertune.models import build_encoder
    from speakertune.scoring.latency import embedding_latency_ms
    from speakertune.train import restore
    from speakertune.train.loop import SpeakerNet

    cfg = resolve({"model": {"name": "tdnn", "channels": 16, "out_channels": 32},
                   "embed_dim": 16, "features": {"num_mel_bins": 24}})
    enc, head = build_encoder(cfg["model"], cfg["pooling"], 24, 16), build_loss(cfg["loss"], 16, 5)
    save_checkpoint(tmp_path, encoder=enc, loss=head, cfg=cfg, num_classes=5, feat_dim=24)
    for classes, head_loaded in ((5, True), (7, False)):  # 7 classes: the head cannot fit
        torch.manual_seed(1)
        net = SpeakerNet(build_encoder(cfg["model"], cfg["pooling"], 24, 16),
                         build_loss(cfg["loss"], 16, classes))
        w = types.SimpleNamespace(net=net, device=torch.device("cpu"), show=None)
        restore.init_from(w, str(tmp_path))
        got, want = net.encoder.state_dict(), enc.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        same_head = all(torch.equal(a, b) for a, b in
                        zip(net.loss.state_dict().values(), head.state_dict().values()))
        assert same_head == head_loaded
    threads = torch.get_num_threads()
    ms = embedding_latency_ms(enc, cfg, repeats=2)
    assert 0 < ms < 10_000 and torch.get_num_threads() == threads and enc.training
