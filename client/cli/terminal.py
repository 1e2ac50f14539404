"""Printing to the operator's terminal: user data is shown literally, never as markup or raw control codes.

Titles, ids, paths, filter values and error messages come from catalogs, files and other people:
a title holding ``[/]`` must not be read as Rich markup (it would crash the print), and one holding
``ESC]0;...BEL`` or ``ESC[2J`` must not retitle or clear the terminal. Everything that is not our
own fixed wording goes through :func:`literal` (a ``rich.text.Text``, so no markup is parsed) with
control characters escaped as ``\\x1b``-style sequences.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

# Bidirectional overrides and isolates can make a terminal show text in another order than it is.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape_controls(text: str, keep_newlines: bool = True) -> str:
    """`text` with C0/C1 control characters (and bidi overrides) written as escapes, e.g. ESC -> ``\\x1b``;
    tabs stay, newlines stay unless `keep_newlines` is False (a table cell, a one-line message)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if (ch == "\n" and keep_newlines) or ch == "\t":
            out.append(ch)
        elif ch in _BIDI or unicodedata.category(ch) == "Cc":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def literal(value: object, style: str | None = None, keep_newlines: bool = True) -> Text:
    """`value` as Rich text that is printed exactly as it is (no markup), control characters escaped."""
    return Text(escape_controls(str(value), keep_newlines), style=style or "")


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def error_line(message: object, hint: str | None = None) -> Text:
    """``error: <message>`` (+ ``hint: <hint>`` on the next line), all of it literal."""
    line = Text.assemble(("error: ", "bold red"), literal(message))
    if hint:
        line.append_text(Text.assemble("\n", ("hint: ", "bold"), literal(hint)))
    return line


def fail(message: object, code: int = 2, hint: str | None = None) -> NoReturn:
    """Print one error (and a hint) on stderr and exit with `code` (2: the input cannot be used)."""
    stderr_console().print(error_line(message, hint), soft_wrap=True)
    raise typer.Exit(code)


def warn(message: object) -> None:
    stderr_console().print(Text.assemble(("warning: ", "yellow"), literal(message)), soft_wrap=True)


def log_to(console: Console):
    """A `log(message)` callable for library code whose messages carry paths and names: printed literally."""
    def log(message: object) -> None:
        console.print(literal(message), soft_wrap=True)
    return log


def echo_plain(line: str) -> None:
    """Plain stdout line (serve commands stream logs): control characters escaped, no Rich."""
    sys.stdout.write(escape_controls(line))
    sys.stdout.flush()
