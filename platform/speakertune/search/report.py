"""The end-of-sweep report: Ray Tune results -> ``TrialRecord``s -> leaderboard files.

The files themselves (Markdown/CSV leaderboard, importances, DET plot, ``best/``) are written by
``search.leaderboard``, which works on plain records without Ray running.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.config import trial_config
from speakertune.data.paths import absolute_paths
from speakertune.redact import redact_config, redact_text
from speakertune.search import leaderboard as lb
from speakertune.search.space import SearchSpace
from speakertune.train.driver import trial_resources


@dataclass
class SweepResult:
    name: str
    experiment_path: str
    report_dir: Path
    leaderboard: pd.DataFrame
    files: dict[str, Path | None]
    num_errors: int
    first_error: str | None = None  # "trial: Type: message" of the first trial that failed


def checkpoint_uri(filesystem: Any, path: Any) -> Any:
    """Ray reports a checkpoint's path within its storage filesystem (``bucket/key`` under
    ``s3://`` storage): as a URI, so the report reads and copies it from there, not from a
    local directory of that name."""
    scheme = getattr(filesystem, "type_name", "local")
    if not isinstance(path, str) or not path or "://" in path or scheme in ("local", "mock"):
        return path
    return f"{scheme}://{path}"


def unreported_epochs(hist: pd.DataFrame, run_uri: str | None) -> pd.DataFrame:
    """``hist`` plus the epochs whose checkpoint the Train run saved but Tune never recorded
    (a driver killed between the two: on ``--resume`` the run has nothing left to report), read
    from each checkpoint's own ``metrics.json``."""
    from speakertune.data import storage

    try:
        files = storage.list_files(run_uri) if run_uri else []
    except storage.StorageError:  # a trial that never saved a checkpoint
        return hist
    seen = set(hist["epoch"]) if "epoch" in hist else set()
    rows = []
    for f in files:
        if re.search(r"checkpoint_epoch_\d+/metrics\.json$", f):
            row = json.loads(storage.read_text(f))
            if row.get("epoch") not in seen:
                rows.append({**row, "checkpoint_path": storage.dirname(f)})
    if not rows:
        return hist
    return pd.concat([hist, pd.DataFrame(rows)]).sort_values("epoch").reset_index(drop=True)


def records_from_results(
    results: Any, space: SearchSpace, base_cfg: dict[str, Any], train_root: str | None = None
) -> list[lb.TrialRecord]:
    """One ``TrialRecord`` per result of a Tune ``ResultGrid`` (errored trials included);
    ``train_root`` (the sweep's ``train_runs``) adds epochs Tune missed (``unreported_epochs``)."""
    out = []
    for res in results:
        hist = res.metrics_dataframe
        hist = hist if hist is not None else pd.DataFrame()
        if "epoch" in hist:  # a resumed run may repeat an epoch it had not finished reporting
            hist = hist.drop_duplicates("epoch", keep="last").reset_index(drop=True)
        if "checkpoint_path" in hist:
            fs = getattr(res, "filesystem", None)
            hist["checkpoint_path"] = [checkpoint_uri(fs, p) for p in hist["checkpoint_path"]]
        params = {k: v for k, v in (res.config or {}).items() if k in space.params}
        cfg = trial_config(base_cfg, params, space.components)
        # Records feed every written report (leaderboard, trial.json): no credentials in them.
        params = redact_config(params)
        metrics = res.metrics or {}
        # A trial that never reported has no metrics: its id ends its directory's name.
        m = re.search(r"_([0-9a-f]{8})$", Path(str(res.path)).name)
        trial_id = metrics.get("trial_id") or (m.group(1) if m else Path(str(res.path)).name)
        if train_root:
            hist = unreported_epochs(hist, f"{train_root.rstrip('/')}/{trial_id}")
        err = None if res.error is None else redact_text(str(res.error).strip().splitlines()[-1])
        out.append(
            lb.TrialRecord(
                trial_id=str(trial_id),
                params=params,
                history=hist,
                status="ERROR" if err else "TERMINATED",
                resources=trial_resources(cfg),
                time_s=float(metrics.get("time_total_s", 0.0) or 0.0),
                error=err,
            )
        )
    return out


def write_report(
    records: list[lb.TrialRecord],
    space: SearchSpace,
    *,
    name: str,
    exp_path: str,
    report_dir: Path,
    det_top_n: int = 3,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Rank ``records`` and write the report files into ``report_dir``; log where they are."""
    s = space.search
    asha = space.scheduler.get("asha")  # absent for FIFO; when present, max_t is always set
    max_t = asha["max_t"] if asha else space.trial_config({})["trainer"]["epochs"]
    objectives = s.get("objectives")
    df = lb.rank_trials(records, metric=s["metric"], mode=s["mode"], max_t=max_t,
                        objectives=objectives)
    df, test_file = _test_lists(df, space, report_dir, log)
    files: dict[str, Path | None] = dict(
        lb.write_leaderboard(df, report_dir, title=f"Sweep {name}")
    )
    log("\n" + lb.to_markdown(df))
    imp, reason = lb.param_importances(records, space, metric=s["metric"], mode=s["mode"])
    files["importances"] = lb.write_importances(imp, reason, report_dir)
    files["test_results"] = test_file
    log("parameter importances: " + (", ".join(f"{k} {v:.2f}" for k, v in imp.items()) or reason))
    files["det"] = (
        lb.det_top(df, report_dir / "det_top.png", top=det_top_n, log=log) if det_top_n else None
    )
    if objectives:  # multi-objective: the trade-off, front highlighted
        files["pareto"] = lb.plot_pareto(df, objectives, report_dir / "pareto.png")
    best = df[df["checkpoint"].notna()].head(1)
    files["best"] = lb.export_best(best.iloc[0], report_dir / "best") if len(best) else None
    errors = sum(r.status == "ERROR" for r in records)
    log(f"leaderboard: {files['markdown']}  ({len(records)} trials, {errors} failed)")
    for key in ("csv", "importances", "test_results", "det", "pareto", "best"):
        if files.get(key):
            log(f"{key}: {files[key]}")
    failed = [r for r in records if r.error]
    first = f"trial {failed[0].trial_id}: {failed[0].error}" if failed else None
    return SweepResult(name, exp_path, report_dir, df, files, errors, first)


def _test_lists(df: pd.DataFrame, space: SearchSpace, report_dir: Path,
                log: Callable[[str], None]) -> tuple[pd.DataFrame, Path | None]:
    """Score the top ``search.test_top_k`` trials on ``data.test`` (after ranking: reported
    only); ``df`` with the test columns and the ``test_results.md`` path (None without lists)."""
    from speakertune.search.holdout import evaluate_test_lists, write_test_results

    s = space.search
    data = absolute_paths(space.trial_config({}))["data"]
    if not data.get("test") or not s.get("test_top_k", 3):
        return df, None
    backend = s.get("backend", "cosine")
    df, rows = evaluate_test_lists(df, data, top_k=s.get("test_top_k", 3), backend=backend,
                                   log=log)
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    return df, write_test_results(rows, Path(report_dir), backend)
