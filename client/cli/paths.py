"""Typer callbacks for the paths a command reads: a regular, readable file, checked before any work.

``exists=True`` accepts a FIFO (reading it blocks forever), ``/dev/zero`` (never ends) or a socket;
these callbacks refuse everything but a regular file, naming the option and the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import typer

from lenscope.client.cli.terminal import escape_controls


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def input_file(value: Path | None) -> Path | None:
    """Option callback: None, or an existing, readable regular file (symlinks followed)."""
    if value is None:
        return None
    shown = escape_controls(str(value))
    try:
        mode = os.stat(value).st_mode
    except FileNotFoundError:
        raise typer.BadParameter(f"{shown} does not exist") from None
    except OSError as err:
        raise typer.BadParameter(f"{shown} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise typer.BadParameter(f"{shown} is {_kind(mode)}, not a regular file")
    if not os.access(value, os.R_OK):
        raise typer.BadParameter(f"{shown} is not readable (permissions)")
    return value


def check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Raise BadParameter naming the line and byte of the first non-UTF-8 sequence in `path` (streamed)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                bad = err.object[err.start]
                line += err.object[:err.start].count(b"\n")
                raise typer.BadParameter(
                    f"{escape_controls(str(path))} line {line}: byte 0x{bad:02x} (offset {offset + err.start}) is not "
                    "UTF-8; save the file as UTF-8") from None
            line += text.count("\n")
            offset += len(chunk)
            if not chunk:
                return


def text_file(value: Path | None) -> Path | None:
    """Option callback: :func:`input_file` that also holds UTF-8 text (spec, weights, calibration, rows)."""
    value = input_file(value)
    if value is not None:
        check_utf8(value)
    return value


def check_current_link(index_root: Path) -> None:
    """Fail (exit 2) when an index root's `current` exists but is not the symlink `index build` publishes."""
    from lenscope.client.cli.terminal import fail
    from lenscope.client.index.bundle_store import CURRENT_LINK

    link = Path(index_root) / CURRENT_LINK
    if os.path.lexists(link) and not link.is_symlink():
        fail(f"{link} is not a symlink: an index root's '{CURRENT_LINK}' is the link 'lenscope index build' publishes",
             hint=f"move it away and rebuild with 'lenscope index build --catalog CATALOG --index-root {index_root}'")


def published_index(index_root: Path) -> str:
    """The version `current` points at, checked before Triton is asked anything: one clear line for an
    empty root or a `current` that is not the symlink `lenscope index build` writes."""
    from lenscope.client.index.bundle_store import CURRENT_LINK, BundleStore

    from lenscope.client.cli.terminal import fail

    check_current_link(index_root)
    version = BundleStore(index_root).current_version()
    if version is None:
        fail(f"--index-root {index_root} holds no published index (no '{CURRENT_LINK}' link)",
             hint=f"build one with 'lenscope index build --catalog CATALOG --index-root {index_root}'")
    return version
