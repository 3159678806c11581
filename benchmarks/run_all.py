"""Run every benchmark and collect their summary rows into benchmarks/RESULTS.md.

Each benchmark prints, as its last Markdown table line, one row:
``| benchmark | ours | baseline | ratio | notes |``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "synthetic_corpus",
    "corpus_scale",
    "audio_io",
    "frontend",
    "encoder",
    "scoring",
    "diarize",
    "sweep_overhead",
    "train_quality",
    "supply_demand",
]
HEADER = (
    "| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |\n"
    "|---|---|---|---|---|"
)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"{gpu}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=BENCHES, help="benchmarks to run")
    ap.add_argument("--full", action="store_true", help="run full sizes instead of --quick")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    rows, failed = [], []
    for name in args.only:
        script = HERE / f"{name}.py"
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, text=True, capture_output=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            failed.append(name)
            rows.append(f"| {name} | failed (exit {proc.returncode}) | | | |")
            continue
        table = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
        rows.append(table[-1] if table else f"| {name} | (no summary row) | | | |")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([f"## Run of {stamp}", "", f"Machine: {machine()}", "", HEADER, *rows, ""])
    print("\n" + body)
    out = Path(args.out)
    old = out.read_text() if out.exists() else "# Benchmark results\n\n"
    out.write_text(old.rstrip() + "\n\n" + body)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
