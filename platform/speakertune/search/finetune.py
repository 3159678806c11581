"""Large-margin fine-tuning (Thienpondt et al., IDLab VoxSRC-20; WeSpeaker's ``lm`` recipe):
continue a trained checkpoint for a few epochs with longer training crops, a larger margin
(AAM/AM softmax) and a lower learning rate.

It is an ordinary training run (``train.driver.train``: the same Ray Train loop, validation and
checkpoints) whose config is the checkpoint's own with those keys overridden and
``trainer.init_checkpoint`` set, so the workers start from the checkpoint's encoder and loss
head with a fresh optimiser and schedule. Settings: ``config.DEFAULTS["finetune"]``, a space's
``finetune:`` section, or ``speakertune finetune`` options.

The report compares the dev EER (95% CI) of the checkpoint with that of the fine-tuned run's
best dev epoch; both come from the trainer's validation (same dev trials, same crops of the
dev utterances, same backend), and each ``data.test`` list is scored once for both (reported
only). Files: ``finetune.md`` and ``finetune.json``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speakertune.checkpoint import load_checkpoint
from speakertune.config import DEFAULTS, ConfigError
from speakertune.data import storage
from speakertune.data.corpus import load_test_lists
from speakertune.data.storage import write_text
from speakertune.search.holdout import score_test_list
from speakertune.search.leaderboard import eer_with_ci
from speakertune.train.driver import train

# Losses with an additive margin that fine-tuning enlarges (a_softmax's margin is an integer
# multiplier; the other losses have none).
MARGIN_LOSSES = ("aam_softmax", "am_softmax")
SETTINGS = DEFAULTS["finetune"]


def finetune_settings(raw: Any, where: str = "finetune") -> dict[str, Any]:
    """``raw`` merged over ``DEFAULTS["finetune"]``, validated; a bad key is a one-line
    ``ConfigError`` naming ``where.key``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of {', '.join(SETTINGS)}")
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; known: {', '.join(SETTINGS)}")
    out = {**SETTINGS, **raw}
    for key in ("top_k", "epochs"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "top_k" else 1):
            raise ConfigError(f"{where}.{key}: must be an integer >= "
                              f"{0 if key == 'top_k' else 1}, got {v!r}")
    for key in ("margin", "crop_seconds", "lr_scale"):
        v = out[key]
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                or v < 0 or (key != "margin" and v == 0)):
            sign = "non-negative" if key == "margin" else "positive"
            raise ConfigError(f"{where}.{key}: must be a {sign} number, got {v!r}")
    return out


def finetune_config(
    cfg: dict[str, Any], settings: dict[str, Any], checkpoint: str | Path
) -> tuple[dict[str, Any], list[str]]:
    """The fine-tuning run's config from the checkpoint's ``cfg``, and what changed (lines)."""
    cfg = copy.deepcopy(cfg)
    s = settings
    changes = []

    def put(section: str, key: str, value: Any) -> None:
        old = cfg.setdefault(section, {}).get(key)
        cfg[section][key] = value
        if old != value:
            changes.append(f"{section}.{key}: {old} -> {value}")

    put("trainer", "epochs", int(s["epochs"]))
    put("data", "min_seconds", float(s["crop_seconds"]))
    put("data", "max_seconds", float(s["crop_seconds"]))
    put("optimizer", "lr", float(cfg["optimizer"]["lr"]) * float(s["lr_scale"]))
    if cfg["loss"].get("name") in MARGIN_LOSSES:
        put("loss", "margin", float(s["margin"]))
    else:
        changes.append(f"loss {cfg['loss'].get('name')}: no additive margin, left as it is")
    # the large margin from the first step (the recipes' fine-tuning has no warm-up)
    put("scheduler", "warmup_epochs", 0)
    put("scheduler", "margin_warmup_epochs", 0)
    cfg["trainer"]["init_checkpoint"] = str(Path(checkpoint).resolve())
    cfg["trainer"]["fail_at_epoch"] = None
    return cfg, changes


def _dev(metrics: dict[str, Any] | None) -> dict[str, float]:
    m = metrics or {}
    return {k: float(m.get(f"val_eer{s}", math.nan)) for k, s in
            (("eer", ""), ("low", "_low"), ("high", "_high"))}


def _tests(ckpt: Path, cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, dict]:
    """Each ``data.test`` list scored once with ``ckpt`` (EER, CI, minDCF)."""

    out = {}
    for name, test in load_test_lists(cfg["data"]).items():
        try:
            out[name] = score_test_list(str(ckpt), test, cfg["trainer"]["val_backend"])
        except (ValueError, OSError) as exc:  # project errors are ValueErrors
            log(f"fine-tune: test {name} not scored with {ckpt}: {str(exc).splitlines()[0]}")
    return out


def finetune(
    checkpoint: str | Path,
    settings: dict[str, Any] | None = None,
    *,
    storage_path: str = "runs",
    out_dir: str | Path,
    label: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the local checkpoint directory ``checkpoint``; copy the best fine-tuned
    checkpoint (by dev EER) to ``out_dir/finetuned/<label>`` and return a report row:
    ``{"label", "checkpoint", "finetuned", "changes", "before": {"dev": {eer, low, high},
    "test": {name: {...}}}, "after": {...}, "epochs", "run_dir"}``."""

    settings = finetune_settings(settings)
    src = Path(checkpoint).resolve()
    before = load_checkpoint(src)
    label = label or src.name
    cfg, changes = finetune_config(before.cfg, settings, src)
    log(f"fine-tuning {src} ({label}): " + "; ".join(changes))
    name = f"finetune_{label}_{time.strftime('%Y%m%d_%H%M%S')}"
    out = train(cfg, storage_path=storage_path, name=name)
    best = out.get("best_checkpoint") or out.get("checkpoint")
    if not best:
        raise ConfigError(f"fine-tuning {src}: the run {name!r} saved no checkpoint")
    dest = storage.copy_tree(str(best), Path(out_dir) / "finetuned" / label)
    after = load_checkpoint(dest)
    row = {
        "label": label, "checkpoint": str(src), "finetuned": str(dest), "changes": changes,
        "settings": settings, "backend": cfg["trainer"]["val_backend"],
        "best_epoch": (after.metrics or {}).get("epoch"), "run_dir": out.get("run_dir"),
        "before": {"dev": _dev(before.metrics), "test": _tests(src, cfg, log)},
        "after": {"dev": _dev(after.metrics), "test": _tests(dest, cfg, log)},
    }
    b, a = row["before"]["dev"], row["after"]["dev"]
    log(f"fine-tune {label}: dev EER {_pct(b)} -> {_pct(a)}")
    return row


def _pct(r: dict[str, float]) -> str:

    return eer_with_ci(r.get("eer"), r.get("low"), r.get("high"))


def write_finetune_report(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """``finetune.md`` (before/after table) and ``finetune.json`` (the rows) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Large-margin fine-tuning",
        "",
        "Dev EER [95% CI] of each checkpoint before and after fine-tuning (after: the "
        "fine-tuned run's best dev epoch), scored by the trainer's validation with the "
        "backend the sweep ranked on; test lists are scored once each and only reported.",
        "",
        "| checkpoint | backend | changes | best epoch | set | EER before | EER after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sets = [("dev", r["before"]["dev"], r["after"]["dev"])]
        sets += [(f"test {n}", r["before"]["test"][n], r["after"]["test"].get(n, {}))
                 for n in r["before"]["test"]]
        for i, (name, b, a) in enumerate(sets):
            head = (f"{r['label']} | {r['backend']} | {'; '.join(r['changes'])} | "
                    f"{r['best_epoch']}") if i == 0 else " | | |"
            lines.append(f"| {head} | {name} | {_pct(b)} | {_pct(a)} |")
    md, js = out / "finetune.md", out / "finetune.json"
    write_text(md, "\n".join(lines) + "\n")
    write_text(js, json.dumps(rows, indent=2, default=str))
    return {"finetune_md": md, "finetune_json": js}


def finetune_top(
    leaderboard: Any,
    settings: dict[str, Any],
    *,
    report_dir: str | Path,
    storage_path: str,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """After a sweep: fine-tune the ``settings["top_k"]`` best ranked trials with a
    checkpoint and write the report into ``report_dir`` (nothing when ``top_k`` is 0)."""

    k = int(settings["top_k"])
    top = leaderboard[leaderboard["rank"].notna() & leaderboard["checkpoint"].notna()].head(k)
    if top.empty:
        return {}
    rows = []
    for _, r in top.iterrows():
        trial = str(r["trial"])
        # a local copy: the run's checkpoint may live on s3://, the workers read a directory
        src = storage.copy_tree(str(r["checkpoint"]), Path(report_dir) / "finetune_from" / trial)
        rows.append(finetune(src, settings, storage_path=storage_path, out_dir=report_dir,
                             label=trial, log=log))
    files = write_finetune_report(rows, report_dir)
    log(f"fine-tuning report: {files['finetune_md']}")
    return files
