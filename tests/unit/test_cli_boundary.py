"""The CLI's error boundary and terminal output: one message and exit 2 for what a user can fix, one
line plus a traceback log (exit 1) for a bug, and user data printed literally with control
characters escaped."""

from __future__ import annotations

import errno
import io
import re
import sqlite3
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from lenscope.client.api import search_pb2
from lenscope.client.cli.boundary import BoundaryGroup, describe
from lenscope.client.cli.search import render
from lenscope.client.cli.terminal import escape_controls, literal
from lenscope.client.index.bundle import BundleCorrupt


def app_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer(cls=BoundaryGroup, pretty_exceptions_enable=False)

    @app.command("go")
    def go() -> None:
        raise exc

    @app.command("other")
    def other() -> None:  # a second command keeps `go` a sub-command (as in lenscope)
        pass

    return app


def test_a_bug_prints_one_line_and_the_traceback_goes_to_a_log_file() -> None:
    result = CliRunner().invoke(app_raising(RuntimeError("boom [/] \x1b[2J")), ["go"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unexpected RuntimeError: boom [/] \\x1b[2J" in lines[0], result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    log = Path(re.search(r"traceback is in (\S+\.log)", lines[0]).group(1))
    try:
        text = log.read_text()
        assert text.startswith("Traceback") and "RuntimeError: boom" in text and "def go" not in lines[0]
    finally:
        log.unlink()


@pytest.mark.parametrize("exc, fragment, hint", [
    (BundleCorrupt("versions/v1/metadata.sqlite: checksum mismatch"), "checksum mismatch", "lenscope index build"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "cat [/].jsonl"), "cat [/].jsonl: No such file",
     "check the path"),
    (OSError(errno.EADDRINUSE, "Address already in use"), "Address already in use", "another port"),
    (OSError(errno.EINVAL, "Invalid argument", "idx/current"), "idx/current: Invalid argument", "symlink"),
    (sqlite3.DatabaseError("file is not a database"), "file is not a database", "lenscope index build"),
    (UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid"), "byte 0xe9 at offset 3", "UTF-8"),
])
def test_expected_failures_are_one_message_with_a_hint_and_exit_2(exc: BaseException, fragment: str, hint: str) -> None:
    result = CliRunner().invoke(app_raising(exc), ["go"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and fragment in result.output, result.output
    assert "hint: " in result.output and hint in result.output, result.output
    assert "Traceback" not in result.output


def test_an_unknown_plain_exception_is_not_described_as_user_error() -> None:
    assert describe(KeyError("x")) is None and describe(AssertionError()) is None


def test_escape_controls_keeps_text_and_escapes_terminal_codes() -> None:
    assert escape_controls("Robe rouge – été 👗") == "Robe rouge – été 👗"
    assert escape_controls("a\x1b]0;pwn\x07b\x1b[2J") == "a\\x1b]0;pwn\\x07b\\x1b[2J"
    assert escape_controls("line\nnext") == "line\nnext"
    assert escape_controls("line\nnext", keep_newlines=False) == "line\\nnext"
    assert escape_controls("\u202eevil") == "\\u202eevil"
    assert literal("[bold]x[/]").plain == "[bold]x[/]"


def test_search_render_prints_hostile_titles_literally() -> None:
    response = search_pb2.SearchResponse(model_hash="m" * 16, index_version="v1", request_id="r1")
    hit = response.hits.add(product_id="p[/]1", title="dress [/] \x1b]0;owned\x07 \x1b[2J [bold]x", score=0.5)
    hit.breakdown["visual"] = 0.5
    facet = response.facets.add(facet="color[/]")
    facet.values.add(value="\x1b[31mred", count=1)
    buf = io.StringIO()
    render(response, Console(file=buf, width=200, force_terminal=False))
    out = buf.getvalue()
    assert "\x1b" not in out and "\x07" not in out
    assert "dress [/] \\x1b]0;owned\\x07 \\x1b[2J [bold]x" in out and "p[/]1" in out
    assert "color[/]" in out and "\\x1b[31mred (1)" in out


def test_search_render_says_how_the_query_was_ranked() -> None:
    response = search_pb2.SearchResponse(model_hash="m" * 16, index_version="v1", request_id="r1")
    response.ranking.CopyFrom(search_pb2.RankingInfo(
        query_type="image+text", ranked_by="text_image", source="self-check", rule="raw-too-few-held-out",
        raw_signals=["visual", "text_image"], reason="only 0 held-out queries (< 10), fused not published"))
    buf = io.StringIO()
    render(response, Console(file=buf, width=400, force_terminal=False))
    out = buf.getvalue()
    assert "ranked by: raw text_image cosine (image+text query, self-check; rule raw-too-few-held-out)" in out
    assert "uncalibrated (raw cosine): visual, text_image" in out and "fused not published" in out
    old = io.StringIO()  # a server older than the rule sends no ranking: nothing is made up
    render(search_pb2.SearchResponse(model_hash="m" * 16), Console(file=old, width=400, force_terminal=False))
    assert "ranked by" not in old.getvalue()
