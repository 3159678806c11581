"""The parity report written next to an exported model: ``parity.json`` and ``parity.md``.

Example: ``write_report(out_dir, report)`` -> ``(out_dir/"parity.json", out_dir/"parity.md")``;
``report`` is what ``bundle.export_checkpoint`` measured (see ``parity``).
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from speakertune.data.storage import write_text

_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages export and parity depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.4f}"


def markdown(r: dict[str, Any]) -> str:
    """The report as a short Markdown page (the JSON holds the same numbers)."""
    v = ", ".join(f"{k} {val}" for k, val in r["versions"].items())
    lines = [
        f"# Export parity: {r['model']} -> {r['format']} ({'PASSED' if r['passed'] else 'FAILED'})",
        "",
        f"- checkpoint: `{r['checkpoint']}`; file: `{r['file'] or '(removed: parity failed)'}`",
        f"- exporter: {r['exporter']}; opset: {r['opset'] or 'n/a'}",
        f"- versions: {v}",
        f"- front end: NOT in the graph: {r['frontend']['name']} (torchaudio.compliance.kaldi) "
        f"+ per-utterance mean normalisation run before the model, parameters in "
        f"`{r['frontend']['file']}`",
        f"- limits: max |embedding difference| <= {r['tolerances']['embedding_rel']:g} x "
        f"max(1, max |embedding|); |dev EER difference| <= "
        f"{100 * r['tolerances']['eer_abs']:g}% absolute",
        "",
        "## Embeddings on real dev audio of several lengths (one file, dynamic time axis)",
        "",
        "| length (s) | frames | max abs diff | max abs embedding |",
        "|---|---|---|---|",
    ]
    for row in r["lengths"]:
        lines.append(f"| {row['seconds']:g} | {row['frames']} | {row['max_abs_diff']:.3g} | "
                     f"{row['max_abs_embedding']:.3g} |")
    d = r["dev"]
    crop = f"centred crops of at most {d['max_seconds']:g} s" if d["max_seconds"] else "whole"
    lines += [
        "",
        f"## Dev EER ({d['utterances']} dev utterances, {crop}; {d['trials']} trials; "
        f"backends fitted on {d['fit_utterances']} training utterances)",
        "",
        f"Max abs embedding difference over all of them: {d['max_abs_diff']:.3g}.",
        "",
        "| backend | EER pytorch (%) | EER exported (%) | abs diff (%) |",
        "|---|---|---|---|",
    ]
    for name, b in d["backends"].items():
        note = f" ({b['error']})" if b.get("error") else ""
        lines.append(f"| {name}{note} | {_pct(b['pytorch'])} | {_pct(b['exported'])} | "
                     f"{_pct(b['abs_diff'])} |")
    lo, hi = d["val_eer_ci95"]["pytorch"]
    lines += ["", f"95% CI of the pytorch dev EER ({d['val_backend']}, bootstrap over "
              f"enrollment speakers): [{_pct(lo)}, {_pct(hi)}]%"]
    if r["failures"]:
        lines += ["", "## Failures", "", *[f"- {f}" for f in r["failures"]]]
    return "\n".join(lines) + "\n"


def _plain(x: Any) -> Any:
    """NaN/inf -> None so the JSON stays standard."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    js, md = out_dir / "parity.json", out_dir / "parity.md"
    write_text(js, json.dumps(_plain(report), indent=2) + "\n")
    write_text(md, markdown(report))
    return js, md
