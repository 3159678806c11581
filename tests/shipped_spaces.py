"""CPU-sized copies of the shipped search spaces: the same model families, poolings, losses,
front end, augmentation (built-in banks), backends, `search.cover` and data section kind, with
only sizes (channels, epochs, batch, corpus, samples) and resources changed."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"

# Per model family: keyword arguments that keep its structure and shrink its widths.
SMALL: dict[str, dict[str, Any]] = {
    "tdnn": {"channels": 16, "out_channels": 32},
    "etdnn": {"channels": 16, "out_channels": 32},
    "ftdnn": {"channels": 32, "bottleneck": 8, "out_channels": 32},
    "dtdnn": {"channels": 16, "growth": 8, "block_layers": [2, 2]},
    "aret": {"channels": 16, "width": 16, "cardinality": 4, "out_channels": 32},
    "ecapa_tdnn": {"channels": 16, "mfa_channels": 48, "se_channels": 8, "scale": 4},
    "rescnn": {"channels": [4, 8, 8, 16]},
    "lstm": {"hidden": 32, "proj": 16, "layers": 1},
    "attention_lstm": {"hidden": 32, "proj": 16, "layers": 1, "heads": 2},
    **{f"resnet{n}": {"base_channels": 4} for n in (10, 18, 34, 50, 101, 221)},
    "ecapa_tdnn_c1024": {"channels": 16, "mfa_channels": 48, "se_channels": 8, "scale": 4},
    "campplus": {"front_channels": 4, "channels": 16, "growth": 8, "bn_size": 2,
                 "block_layers": [1, 1, 1]},
    "eres2netv2": {"channels": 4, "blocks": [1, 1, 1, 1]},
    "simam_resnet34": {"base_channels": 4},
    # 8 channels: every preset's block type and group divisor (b1's is 8) still fits
    "redimnet": {"channels": 8, "stages": [[1, 1, 1, 4], [2, 1, 1, 4]]},
}
TRAINER = {"epochs": 1, "batch_size": 8, "plda_utts": 16, "val_max_seconds": 1.0,
           "e2e_speakers": 3}  # fmt: skip
# Sampled sizes are sizes too: the choices a CPU copy samples instead.
SIZE_PARAMS = {"model.channels": {"choice": [8, 16]},
               "trainer.e2e_speakers": {"choice": [2, 3]},
               "trainer.e2e_utts": {"int": [2, 3]}}  # fmt: skip


def models_of(space: dict[str, Any]) -> list[str]:
    """Every model the space can pick (its base model, or the default, and sampled names)."""
    base = (space.get("base") or {}).get("model") or {}
    names = [base.get("name", "ecapa_tdnn")]
    names += ((space.get("params") or {}).get("model.name") or {}).get("choice", [])
    return list(dict.fromkeys(names))


def cpu_sized(space: dict[str, Any], data: dict[str, Any], *, concurrent: int = 4,
              samples: int | None = None) -> dict:
    """``space`` shrunk to CPU size, reading ``data`` (a tiny corpus's data section), with
    ``samples`` trials (default: one per value of its ``search.cover`` parameters, or 1)."""
    out = copy.deepcopy(space)
    base = out.setdefault("base", {})
    comps = out.setdefault("components", {}).setdefault("model", {})
    for name in models_of(space):
        comps[name] = {**comps.get(name, {}), **SMALL[name]}
    base["embed_dim"] = 16
    base["features"] = {**base.get("features", {}), "num_mel_bins": 24}
    base["trainer"] = {**base.get("trainer", {}), **TRAINER}
    kind = (base.get("data") or {}).get("corpus", "synthetic")
    assert kind == data["corpus"] or "data" not in space["base"], (kind, data)
    base["data"] = dict(data)
    params = out.get("params") or {}
    for path, spec in SIZE_PARAMS.items():
        if path in params:
            params[path] = {**params[path], **spec}
            params[path].pop("choice" if "int" in spec else "int", None)
    search = out.setdefault("search", {})
    cover = search.get("cover") or []
    values = sum(len(params[p]["choice"]) for p in cover)
    search.update(num_samples=samples or max(1, values), time_limit_s=None,
                  max_concurrent=concurrent)
    if "scheduler" in out:
        out["scheduler"] = {"asha": {"grace_period": 1, "reduction_factor": 2, "max_t": 1}}
    res = out.get("resources") or {}
    workers = int(res.get("num_workers", 1))
    # fractions of a core, so several trials start at once on 2 cores
    out["resources"] = {"num_workers": workers, "cpus_per_worker": 0.25, "data_cpus": 0.25,
                        "gpus_per_worker": 0, "use_gpu": False}  # fmt: skip
    return out


def run_sweep_job(space_file: Path, cwd: Path, *args: str, timeout: int = 900):
    """``python jobs/sweep.py --space FILE`` as a user types it; the completed process."""
    cmd = [sys.executable, str(REPO / "jobs" / "sweep.py"), "--space", str(space_file), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((SPACES / f"{name}.yaml").read_text())
