"""Dev chooses, test only reports: after a tiny sweep the top trial's best-dev-epoch checkpoint
is scored once on a test list carved from held-out speakers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from speakertune.data.manifest import read_manifest
from speakertune.search import leaderboard as lb
from speakertune.search import sweep
from speakertune.search.space import parse_space
from test_sweep import _tiny_space


def _test_list(corpus: Path, out: Path) -> list[str]:
    """All pairs of two speakers' utterances (the first two speakers of the corpus)."""
    df = read_manifest(corpus / "manifest.parquet")
    spks = sorted(df["spk"].unique())[:2]
    utts = sorted(df.loc[df["spk"].isin(spks), "utt"])
    spk = dict(zip(df["utt"], df["spk"]))
    out.write_text("".join(f"{a} {b} {int(spk[a] == spk[b])}\n"
                           for i, a in enumerate(utts) for b in utts[i + 1:]))
    return spks


def test_markdown_shows_test_columns_apart_from_the_ranking():
    df = pd.DataFrame([{c: None for c in lb.COLUMNS}])
    df = df.assign(rank=1, trial="t", val_eer=0.021, val_eer_low=0.017, val_eer_high=0.025,
                   test_o_eer=0.03, test_o_low=0.02, test_o_high=0.04)
    md = lb.to_markdown(df)
    assert "| dev EER [95% CI] |" in md and md.rstrip().endswith("| 3.00% [2.0, 4.0] |")
    assert "| 2.10% [1.7, 2.5] |" in md and "test o EER [CI]" in md


def test_space_validates_test_top_k():
    from speakertune.search.space import SpaceError

    with pytest.raises(SpaceError, match=r"search\.test_top_k: must be an integer >= 0"):
        parse_space({"search": {"test_top_k": -1}}, source="x.yaml")
    assert parse_space({}, source="x.yaml").search["test_top_k"] == 3


@pytest.mark.slow
def test_sweep_scores_the_top_trial_on_test_lists_after_ranking(ray_local, tiny_corpus, tmp_path,
                                                                capsys):
    from speakertune.scoring.evaluate import evaluate

    _test_list(tiny_corpus, tmp_path / "test.txt")
    data = _tiny_space(tiny_corpus, num_samples=1)
    data["base"]["data"]["test"] = {"o": {"trials": str(tmp_path / "test.txt")}}
    data["base"]["trainer"]["epochs"] = 1
    data["params"] = {"optimizer.lr": {"loguniform": [1e-3, 1e-2]}}
    data["search"]["test_top_k"] = 1
    space = parse_space(data, source="tiny.yaml")
    result = sweep.run_sweep(space, storage=str(tmp_path / "runs"),
                             report_root=tmp_path / "report", det_top=0)
    out = tmp_path / "report" / "tiny"
    df = pd.read_csv(out / "leaderboard.csv")
    row = df.iloc[0]
    assert 0.0 <= row["test_o_low"] <= row["test_o_high"] <= 1.0 and 0 <= row["test_o_eer"] <= 1
    # The sweep ranked on dev only: val_eer is the trial's cosine dev EER, not the test one.
    assert math.isclose(row["val_eer"], row["val_eer_cosine"])
    again = evaluate(str(row["checkpoint"]), str(tiny_corpus / "manifest.parquet"),
                     str(tmp_path / "test.txt"), backend="cosine", progress=False, tsne=False)
    assert math.isclose(again.metrics["cosine"]["eer"], row["test_o_eer"], abs_tol=1e-12)
    md = (out / "leaderboard.md").read_text()
    assert "test o EER [CI]" in md and "dev EER [95% CI]" in md
    text = (out / "test_results.md").read_text()
    assert "| 1 | " in text and "| o |" in text and "never ranked" in text
    assert "## Calibrated scores" in text and "| o | qmf |" in text  # trained on dev trials
    assert result.files["test_results"] == out / "test_results.md"
    assert "test o: trial " in capsys.readouterr().out
