"""Export a checkpoint's encoder and prove it: model file, ``frontend.json``, parity report.

``export_checkpoint`` writes into ``out_dir`` (default ``<checkpoint>/export/<format>``):

* ``encoder.onnx`` or ``encoder.torchscript.pt``: features ``[batch, frames, feat_dim]`` ->
  embedding ``[batch, embed_dim]``, both the batch and the time axis dynamic;
* ``frontend.json``: the front end (not in the graph) a runtime must reproduce;
* ``parity.json`` / ``parity.md``: see ``parity``. Parity is always checked; when it fails the
  model file is removed (the report stays, saying why) and ``ParityError`` is raised.

Example: ``export_checkpoint("runs/s/best", "onnx").report["dev"]["backends"]["cosine"]`` ->
``{"pytorch": 0.0412, "exported": 0.0412, "abs_diff": 0.0, "error": None}``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speakertune.data.storage import staging_dir, swap_into_place, write_text
from speakertune.export.frontend_spec import frontend_spec
from speakertune.export.onnx_model import load_onnx, save_onnx
from speakertune.export.parity import (
    EER_TOL,
    EMB_TOL,
    LENGTHS_S,
    ParityError,
    check_dev,
    check_lengths,
    failures,
    load_dev_set,
)
from speakertune.export.parity_report import versions, write_report
from speakertune.export.torchscript_model import load_torchscript, save_torchscript


class ExportError(ValueError):
    """The model cannot be written in the asked format; the message names the model."""


@dataclass(frozen=True)
class Format:
    label: str
    filename: str
    save: Callable[[torch.nn.Module, int, Path], dict[str, Any]]
    load: Callable[[Path], torch.nn.Module]


FORMATS = {
    "onnx": Format("ONNX", "encoder.onnx", save_onnx, load_onnx),
    "torchscript": Format("TorchScript", "encoder.torchscript.pt", save_torchscript,
                          load_torchscript),
}


@dataclass
class ExportResult:
    out_dir: Path
    model_file: Path
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _write_model(ckpt: Any, fmt: str, path: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    f = FORMATS[fmt]
    try:
        info = f.save(ckpt.encoder, ckpt.feat_dim, path)
        return info, f.load(path)
    except Exception as exc:  # exporters raise many types (SymbolicValueError, RuntimeError..)
        path.unlink(missing_ok=True)
        name = ckpt.cfg["model"]["name"]
        raise ExportError(f"model {name!r} cannot be exported to {f.label}: "
                          f"{_first_line(exc)}") from None


def _check_target(out: Path, emb_tol: float, eer_tol: float, overwrite: bool) -> None:
    for name, tol in (("emb_tol", emb_tol), ("eer_tol", eer_tol)):
        if not (tol >= 0 and math.isfinite(tol)):
            raise ExportError(f"{name} must be a finite number >= 0, got {tol}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "parity.json").is_file():  # the swap replaces the folder: only one of ours
        raise ExportError(f"{out}: holds files that are not an export; choose a new or empty "
                          "--out")
    if not overwrite:
        raise ExportError(f"{out}: already holds an export; pass --overwrite to replace it "
                          "(it is replaced only if the new model passes its parity check)")


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out_dir: str | Path | None = None,
    *,
    emb_tol: float = EMB_TOL,
    eer_tol: float = EER_TOL,
    lengths_s: tuple[float, ...] = LENGTHS_S,
    overwrite: bool = False,
) -> ExportResult:
    """Export the encoder of ``checkpoint`` as ``fmt`` (``onnx`` | ``torchscript``) and check
    parity with the PyTorch encoder on the checkpoint's dev set (``parity``).

    Everything is built in a hidden sibling of ``out_dir`` and swapped into place only when
    the check passes, model and report together; an existing export is replaced only with
    ``overwrite``. A failed check leaves ``out_dir`` as it was and its report in
    ``<out_dir>.rejected/`` (the model it rejected is not kept)."""
    from speakertune.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out_dir) if out_dir is not None else Path(checkpoint) / "export" / fmt
    _check_target(out, emb_tol, eer_tol, overwrite)
    ckpt = load_checkpoint(checkpoint)
    stage = staging_dir(out)
    try:
        report = _build(ckpt, str(checkpoint), fmt, stage, emb_tol, eer_tol, lengths_s)
        if report["failures"]:
            (stage / FORMATS[fmt].filename).unlink(missing_ok=True)
            rejected = swap_into_place(stage, out.with_name(out.name + ".rejected"))
            fails = report["failures"]
            more = f" (and {len(fails) - 1} more)" if len(fails) > 1 else ""
            raise ParityError(f"{report['model']} -> {fmt}: parity exceeded: {fails[0]}{more}; "
                              f"{out} left as it was, report in {rejected / 'parity.md'}")
        swap_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already unless something failed
    names = {"model": FORMATS[fmt].filename, "frontend": "frontend.json",
             "report_json": "parity.json", "report_md": "parity.md"}
    return ExportResult(out, out / names["model"], report,
                        {k: out / v for k, v in names.items()})


def _build(ckpt: Any, checkpoint: str, fmt: str, out: Path, emb_tol: float, eer_tol: float,
           lengths_s: tuple[float, ...]) -> dict[str, Any]:
    """The model, ``frontend.json`` and the parity report in ``out``; the report."""
    path = out / FORMATS[fmt].filename
    info, exported = _write_model(ckpt, fmt, path)
    spec = out / "frontend.json"
    write_text(spec, json.dumps(frontend_spec(ckpt.cfg, ckpt.feat_dim), indent=2) + "\n")
    dev = load_dev_set(ckpt.cfg)
    lengths = check_lengths(ckpt.encoder, exported, ckpt.cfg, dev, lengths_s)
    dev_res = check_dev(ckpt.encoder, exported, dev, ckpt.cfg)
    fails = failures(lengths, dev_res, emb_tol, eer_tol)
    report = {
        "passed": not fails, "failures": fails, "format": fmt,
        "model": ckpt.cfg["model"]["name"], "pooling": ckpt.cfg["pooling"]["name"],
        "checkpoint": checkpoint, "file": None if fails else path.name,
        **info, "feat_dim": ckpt.feat_dim, "embed_dim": int(ckpt.cfg["embed_dim"]),
        "frontend": {"in_graph": False, "file": spec.name,
                     "name": ckpt.cfg["features"]["name"]},
        "versions": versions(),
        "tolerances": {"embedding_rel": emb_tol, "eer_abs": eer_tol},
        "lengths": lengths, "dev": dev_res,
    }
    write_report(out, report)
    return report
