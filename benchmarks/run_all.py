"""Run every benchmark and write their summary rows to a dated file in benchmarks/history/.

A benchmark is any ``benchmarks/<group>/<name>.py`` with a ``__main__`` block (groups:
``compare``, ``sizing``, ``scale``); it gets ``--quick`` when it accepts one, and prints, as its
last Markdown table line, one row ``| benchmark | ours | baseline | ratio | notes |``. A script
that cannot run unattended says why in a module-level ``RUN_ALL_SKIP = "..."`` line. The
current figures in RESULTS.md are updated by hand from these runs.

    .venv/bin/python benchmarks/run_all.py [--only frontend scoring] [--full] [--list]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS = ("compare", "sizing", "scale")
HEADER = (
    "| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |\n"
    "|---|---|---|---|---|"
)
_SKIP = re.compile(r'^RUN_ALL_SKIP = "(.+)"$', re.M)


def discover() -> dict[str, tuple[Path, str | None]]:
    """name -> (script, the reason it is skipped or None), in group order."""
    found: dict[str, tuple[Path, str | None]] = {}
    for group in GROUPS:
        for script in sorted((HERE / group).glob("*.py")):
            text = script.read_text()
            if 'if __name__ == "__main__"' not in text:
                continue  # a helper module of its group
            skip = _SKIP.search(text)
            found[script.stem] = (script, skip.group(1) if skip else None)
    return found


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"{gpu}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def run_one(script: Path, full: bool) -> str:
    """Runs ``script``; its summary row (or a row saying why there is none)."""
    quick = not full and "--quick" in script.read_text()
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    print(f"== {script.parent.name}/{script.name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return f"| {script.stem} | failed (exit {proc.returncode}) | | | |"
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    return table[-1] if table else f"| {script.stem} | (no summary row) | | | |"


def main() -> int:
    found = discover()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(found), help="benchmarks to run")
    ap.add_argument("--full", action="store_true", help="run full sizes instead of --quick")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--out", type=Path, default=None, help="default: history/run-<UTC time>.md")
    args = ap.parse_args()
    if args.list:
        for script, skip in found.values():
            print(f"{script.relative_to(HERE)}" + (f"  (skipped: {skip})" if skip else ""))
        return 0
    rows, failed = [], []
    for name in args.only or list(found):
        script, skip = found[name]
        if skip and not args.only:
            print(f"== {name}: skipped ({skip})")
            continue
        rows.append(run_one(script, args.full))
        failed += [name] if "| failed (exit" in rows[-1] else []
    now = dt.datetime.now(dt.timezone.utc)
    body = "\n".join([f"# Run of {now:%Y-%m-%d %H:%M} UTC (`run_all.py`"
                      f"{', full sizes' if args.full else ', --quick sizes'})", "",
                      f"Machine: {machine()}", "", HEADER, *rows, ""])
    print("\n" + body)
    out = args.out or HERE / "history" / f"run-{now:%Y-%m-%dT%H%M}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(body)
    tmp.replace(out)
    print(f"written: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
