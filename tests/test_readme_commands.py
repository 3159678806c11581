"""Every command the README and docs/ tell a user to type parses as written: each `make`
target exists, each `jobs/X.py` / `speakertune X` / `python -m speakertune X` line is accepted
by that command's own argument parser (an option renamed or removed fails here). Bracketed
parts (``[--threshold bayes|far]``) are documented optional options and are parsed too."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from speakertune import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PYTHONS = ("python", "python3", ".venv/bin/python", "~/speakertune/.venv/bin/python")


def command_lines(text: str) -> list[str]:
    """The lines of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                out.append(tokens)
    return out


def speakertune_argv(tokens: list[str]) -> list[str] | None:
    """``[COMMAND, args...]`` of a speakertune invocation, else None."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:1] == ["speakertune"]:
        return tokens[1:]
    if tokens and tokens[0] in PYTHONS:
        if tokens[1:3] == ["-m", "speakertune"]:
            return tokens[3:]
        m = re.fullmatch(r"jobs/(\w+)\.py", tokens[1]) if len(tokens) > 1 else None
        if m:
            assert (REPO / tokens[1]).is_file(), tokens[1]
            return [m.group(1), *tokens[2:]]
    return None


def _unbracket(argv: list[str]) -> list[str]:
    """``[--threshold bayes|far]`` -> ``--threshold bayes``: an optional part, first choice."""
    out = []
    for t in argv:
        t = t.strip("[]")
        out.append(t.split("|")[0] if "|" in t and not t.startswith("-") else t)
    return out


def collected() -> list[tuple[str, list[str]]]:
    rows = []
    for doc in DOCS:
        for tokens in command_lines(doc.read_text()):
            argv = speakertune_argv(tokens)
            if argv is not None:
                rows.append((f"{doc.relative_to(REPO)}: {shlex.join(tokens)}", argv))
            elif tokens[0] == "make":
                rows.append((f"{doc.relative_to(REPO)}: {shlex.join(tokens)}", tokens))
    return rows


ROWS = collected()


def test_the_docs_show_commands() -> None:
    kinds = {argv[0] for _, argv in ROWS}
    assert len(ROWS) >= 20 and {"sweep", "prepare", "evaluate", "verify", "make"} <= kinds


@pytest.mark.parametrize("where,argv", ROWS, ids=[w for w, _ in ROWS])
def test_documented_command_parses(where: str, argv: list[str]) -> None:
    if argv[0] == "make":
        phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
        assert all(t in phony.group(1).split() for t in argv[1:] if "=" not in t), where
        return
    argv = _unbracket(argv)
    if not argv or argv[0].startswith("-") or argv[0] == "list":
        parser = cli.build_parser()
    else:
        assert argv[0] in cli.COMMANDS, f"{where}: no such command {argv[0]!r}"
        parser = importlib.import_module(f"speakertune.commands.{argv[0]}").build_parser()
        argv = argv[1:]
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{where}: rejected by its parser"


def test_readme_is_an_entry_and_its_links_resolve() -> None:
    """The README stays an entry (the manual lives in docs/), and every relative link of the
    README and docs/ names a file that exists."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: {target}"


def _runnable(argv: list[str]) -> list[str] | None:
    """The documented commands cheap enough to run as written: doctor, list, --help, and a
    sweep of a shipped space with the README's own --check (the full runs are in
    test_shipped_spaces)."""
    if argv[0] in ("doctor", "list") or "--help" in argv:
        return argv
    if argv[0] == "sweep" and "--resume" not in argv and "--space" in argv:
        space = argv[argv.index("--space") + 1]
        if (REPO / "search_spaces" / space).is_file() and "--storage" not in argv:
            return argv if "--check" in argv else [*argv, "--check"]
    return None


RUNNABLE = list({tuple(_runnable(a)): (w, _runnable(a)) for w, a in ROWS
                 if a[0] != "make" and _runnable(a)}.values())  # each distinct command once


@pytest.mark.parametrize("where,argv", RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_documented_command_runs(where: str, argv: list[str], tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "speakertune", *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, f"{where}: exit {out.returncode}\n{out.stderr[-2000:]}"
    assert out.stdout.strip(), where
