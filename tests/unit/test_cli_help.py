"""The newcomer's view of the CLI: every --help is readable at 80 columns (nothing cut), and no help
text, hint, error message or README line sends the user to a command that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lenscope.client.cli.app import app

REPO = Path(__file__).resolve().parents[2]
ROOT = typer.main.get_command(app)


def command_paths(cmd=ROOT, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(cmd, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths()


def resolves(words: list[str]) -> bool:
    """`lenscope a b ...`: each word down the tree names a command, until a leaf (the rest are arguments)."""
    cmd = ROOT
    for word in words:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            return True  # a leaf command: what follows are its arguments
        if word not in subs:
            return False
        cmd = subs[word]
    return True


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "lenscope" for p in PATHS])
def test_help_is_readable_at_80_columns(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    for line in result.output.splitlines():
        assert len(line) <= 80, f"{line!r} is wider than 80 columns"
        cut = "…" in line or (line.rstrip().endswith("...") and not line.rstrip().endswith("[ARGS]..."))
        assert not cut, f"cut at 80 columns: {line!r}"


def mentions() -> list[tuple[str, str]]:
    """(where, 'noun verb') for every quoted or back-ticked `lenscope ...` in sources, help and README."""
    found = []
    pattern = re.compile(r"[`'\"]lenscope((?: [a-z][a-z0-9-]*)+)")
    files = [*REPO.joinpath("client").rglob("*.py"), *REPO.joinpath("export").rglob("*.py"), REPO / "README.md",
             *REPO.joinpath("docs").glob("*.md")]
    for f in files:
        for m in pattern.finditer(f.read_text(encoding="utf-8")):
            found.append((f"{f.relative_to(REPO)}", m.group(1).strip()))
    for path in PATHS:
        text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        found += [(f"lenscope {' '.join(path)} --help", m.group(1).strip()) for m in pattern.finditer(text)]
    return found


def test_no_text_promises_a_command_that_does_not_exist() -> None:
    found = mentions()
    assert len(found) > 20  # the scan sees the README's CLI section and the hints
    missing = [(where, words) for where, words in found if not resolves(words.split()[:2])]
    assert not missing, f"mentions of commands that do not exist: {missing}"
