"""Regenerate docs/cli.md from the CLI's own --help (tests/test_cli.py checks it is current)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from feature_store.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def render() -> str:
    runner = CliRunner()
    parts = [
        "# Command line\n",
        "`feature-store` (also `python -m feature_store`) acts on the feature repo in the current folder, or the one",
        "given with `--repo PATH`. Errors print one line naming the problem (for an error in a repo file: its file",
        "and line) and exit with status 1; `--debug` also prints the traceback.",
        "This page is generated from `--help` by `python scripts/gen_cli_docs.py`.\n",
    ]
    assert isinstance(main, click.Group)  # noqa: S101 - a script, not library code
    for name in [None, *sorted(main.commands)]:
        args = ["--help"] if name is None else [name, "--help"]
        text = runner.invoke(main, args, prog_name="feature-store", terminal_width=100).output
        parts.append(f"## `feature-store{'' if name is None else ' ' + name}`\n\n```\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    DOC.write_text(render())
    sys.stdout.write(f"wrote {DOC}\n")
