"""Dev chooses, test only reports: after a tiny sweep the top trial's best-dev-epoch checkpoint
is scored once on a test list carved from held-out speakers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from speakertune.search import leaderboard as lb
from speakertune.search.space import parse_space


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
def test_sweep_scores_the_top_trial_on_test_lists_after_ranking(e2e_sweep):
    """The end-to-end sweep's space names a test list and ``search.test_top_k: 1``."""
    from speakertune.scoring.evaluate import evaluate

    out, result = e2e_sweep.out, e2e_sweep.result
    df = pd.read_csv(out / "leaderboard.csv")
    row = df.iloc[0]
    assert 0.0 <= row["test_o_low"] <= row["test_o_high"] <= 1.0 and 0 <= row["test_o_eer"] <= 1
    assert df["test_o_eer"].iloc[1:].isna().all()  # test_top_k: 1, the others never scored
    # The sweep ranked on dev only: val_eer is the trial's cosine dev EER, not the test one.
    assert math.isclose(row["val_eer"], row["val_eer_cosine"])
    again = evaluate(str(row["checkpoint"]), str(e2e_sweep.corpus / "manifest.parquet"),
                     str(e2e_sweep.trials), backend="cosine", progress=False, tsne=False)
    assert math.isclose(again.metrics["cosine"]["eer"], row["test_o_eer"], abs_tol=1e-12)
    md = (out / "leaderboard.md").read_text()
    assert "test o EER [CI]" in md and "dev EER [95% CI]" in md
    text = (out / "test_results.md").read_text()
    assert "| 1 | " in text and "| o |" in text and "never ranked" in text
    assert "## Calibrated scores" in text and "| o | qmf |" in text  # trained on dev trials
    assert result.files["test_results"] == out / "test_results.md"
    assert "test o: trial " in e2e_sweep.log
