"""Every `edgefleet ...` command shown in README.md and docs/*.md parses with today's command line: a renamed
flag or command breaks this test, not a reader's first hour."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edgefleet.cli import _expand_shorthands, build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _commands(path: Path) -> list[str]:
    """The `edgefleet` command lines of the sh code blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("edgefleet "):
                words = shlex.split(line, comments=True)
                commands.append(" ".join(shlex.quote(w) for w in words[1:]))
    return commands


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_documented_commands_parse(doc: Path) -> None:
    parser = build_parser()
    for command in _commands(doc):
        try:
            parser.parse_args(_expand_shorthands(shlex.split(command)))
        except SystemExit as exc:
            pytest.fail(f"{doc.name}: `edgefleet {command}` does not parse (exit {exc.code})")


def test_the_docs_show_commands() -> None:
    assert len(_commands(REPO / "docs" / "first-hour.md")) >= 6 and len(_commands(REPO / "README.md")) >= 15
