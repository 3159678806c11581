"""After the sweep: the top trials' chosen checkpoints scored once on each test list.

Test lists (``data.test``) are never seen while searching: the sweep ranks, stops and picks
epochs on dev. Here the ``search.test_top_k`` best trials' best-dev-epoch checkpoints are
evaluated with ``scoring.evaluate.evaluate`` on each list, scored with the backend the sweep
ranked on, and the EER with its 95% CI (enrollment speakers resampled) is *reported*: in
``test <name> EER [CI]`` leaderboard columns and ``test_results.md``; never used to rank.
Each checkpoint's dev trials are scored the same way to train linear and QMF calibrations
(``scoring.calibration``), applied to the test scores: ``test_results.md`` also reports
actDCF and Cllr before and after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.corpus import TestList, load_corpus, load_test_lists
from speakertune.data.storage import write_text
from speakertune.scoring import calibration
from speakertune.scoring.backends import enroll_ids
from speakertune.scoring.metrics import bootstrap_ci


def score_test_list(ckpt: str, test: TestList, backend: str, dev: Any = None) -> dict[str, Any]:
    """EER, its 95% CI and minDCF(0.01) of one checkpoint on one test list; with ``dev`` (its
    ``EvalResult`` on the dev trials, and the dev utterances) also calibrated reports."""
    from speakertune.scoring.evaluate import evaluate

    res = evaluate(ckpt, test.utts, test.trials, backend=backend, progress=False, tsne=False)
    spk = dict(zip(test.utts["utt"].astype(str), test.utts["spk"].astype(str)))
    groups = res.trials["enroll"].astype(str).map(lambda e: spk.get(enroll_ids(e)[0], e))
    ci = bootstrap_ci(res.scores[res.backend], res.trials["label"].to_numpy(), groups.to_numpy())
    out = {"eer": ci["eer"], "low": ci["eer_low"], "high": ci["eer_high"],
           "min_dcf": ci["min_dcf"], "trials": float(len(res.trials))}
    if dev is not None:
        out["calibrated"] = calibration.eval_reports(dev[0], dev[1], res, test.utts,
                                                     groups.to_numpy())
    return out


def _dev_result(ckpt: str, dev: TestList, backend: str) -> Any:
    """``(EvalResult on the dev trials, dev utterances)`` to train calibrations on."""
    from speakertune.scoring.evaluate import evaluate

    res = evaluate(ckpt, dev.utts, dev.trials, backend=backend, progress=False, tsne=False)
    return res, dev.utts


def evaluate_test_lists(
    df: pd.DataFrame,
    data_cfg: dict[str, Any],
    *,
    top_k: int,
    backend: str,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """``df`` (a ranked leaderboard) plus ``test_<name>_eer/_low/_high`` columns for its top
    ``top_k`` ranked trials with a checkpoint, and one row per (trial, list) for
    ``test_results.md``. A checkpoint that cannot be scored is logged and left blank."""
    tests = load_test_lists(data_cfg)
    if not tests or top_k < 1:
        return df, []
    df = df.copy()
    for name in tests:
        for part in ("eer", "low", "high"):
            df[f"test_{name}_{part}"] = math.nan
    rows: list[dict[str, Any]] = []
    top = df[df["rank"].notna() & df["checkpoint"].notna()].head(top_k)
    corpus = load_corpus(data_cfg)  # the dev trials, which train the calibrations
    dev_list = TestList("dev", corpus.val, corpus.trials)
    for i, row in top.iterrows():
        dev = None
        try:
            dev = _dev_result(str(row["checkpoint"]), dev_list, backend)
        except (ValueError, OSError) as exc:
            log(f"dev trials: trial {row['trial']} not calibrated: {str(exc).splitlines()[0]}")
        for name, test in tests.items():
            try:
                r = score_test_list(str(row["checkpoint"]), test, backend, dev)
            except (ValueError, OSError) as exc:  # project errors are ValueErrors
                log(f"test {name}: trial {row['trial']} not scored: {str(exc).splitlines()[0]}")
                continue
            for part in ("eer", "low", "high"):
                df.loc[i, f"test_{name}_{part}"] = r[part]
            rows.append({"rank": int(row["rank"]), "trial": row["trial"],
                         "best_epoch": row["best_epoch"], "test": name, **r})
            log(f"test {name}: trial {row['trial']} (dev rank {int(row['rank'])}) EER "
                f"{100 * r['eer']:.2f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
                + calibration.summary_line(r.get("calibrated")))
    return df, rows


def write_test_results(rows: list[dict[str, Any]], out_dir: Path, backend: str) -> Path | None:
    """``test_results.md``: one row per (trial, test list); None when nothing was scored."""
    if not rows:
        return None
    lines = [
        "# Test results",
        "",
        f"Chosen on dev (each trial's best dev epoch, backend {backend}); scored once on each "
        "test list after the sweep. Reported only: these numbers never ranked anything.",
        "",
        "| dev rank | trial | best epoch | test list | EER [95% CI] | minDCF(0.01) | trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ep = "-" if r["best_epoch"] is None or pd.isna(r["best_epoch"]) else int(r["best_epoch"])
        lines.append(f"| {r['rank']} | {r['trial']} | {ep} | {r['test']} | "
                     f"{100 * r['eer']:.2f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}] | "
                     f"{r['min_dcf']:.3f} | {int(r['trials']):,} |")
    lines += calibration.results_table(rows)
    path = Path(out_dir) / "test_results.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
