"""What a writing command may overwrite: only what the project wrote itself.

Every command that writes (a model repository, a catalog, an index root, a rejects file, a report,
a checkpoint, fitted weights) checks its output path here *before* doing any work: a folder is
ours when it is new, empty, or holds one of the marker entries its writer always leaves (e.g. the
export manifest); a file is ours when it is new, empty, or recognised by the writer's predicate. An
output equal to one of the command's inputs is refused outright. Anything else is the user's and
is refused with a message naming the option, the path and what to do instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class OutputRefused(ValueError):
    """An output path that holds something the project did not write (or is one of the inputs)."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_not_input(path: Path, option: str, inputs: Mapping[str, Path | None]) -> None:
    """Refuse an output that is (or resolves to) one of the inputs: writing it would destroy the input."""
    for input_option, input_path in inputs.items():
        if input_path is not None and _same(Path(path), Path(input_path)):
            raise OutputRefused(f"{option} {path} is also the input {input_option}: writing it would overwrite "
                                f"that input; choose another {option}")


def check_output_dir(path: Path, option: str, markers: Sequence[str], what: str) -> None:
    """A folder we may write into or replace: absent, empty, or holding one of `markers` (relative
    paths its writer always leaves). Refuses a file, a special file or a user's folder."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise OutputRefused(f"{option} {path} exists and is not a folder; give a new or empty folder for {what}")
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as err:
        raise OutputRefused(f"{option} {path} cannot be listed ({err.strerror}); give a folder you can write") from None
    if not entries or any(os.path.lexists(path / m) for m in markers):
        return
    shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutputRefused(
        f"{option} {path} is a folder lenscope did not write (no {markers[0]}; it holds {len(entries)} "
        f"entr{'y' if len(entries) == 1 else 'ies'}: {shown}); refusing to write {what} into it. "
        f"Give a new or empty folder, or remove its contents yourself")


def check_output_file(path: Path, option: str, ours: Callable[[Path], bool], what: str,
                      inputs: Mapping[str, Path | None] | None = None) -> None:
    """A file we may (over)write: not an input, and absent, empty or recognised by `ours`."""
    path = Path(path)
    check_not_input(path, option, inputs or {})
    if not os.path.lexists(path):
        return
    try:
        st = os.stat(path)
    except OSError as err:
        raise OutputRefused(f"{option} {path} cannot be examined ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"{option} {path} is a folder; give a file path for {what}")
    if not stat.S_ISREG(st.st_mode):
        raise OutputRefused(f"{option} {path} is a special file (device, FIFO or socket); give a regular file path "
                            f"for {what}")
    if st.st_size == 0:
        return
    try:
        recognised = ours(path)
    except (OSError, ValueError):
        recognised = False
    if not recognised:
        raise OutputRefused(f"{option} {path} already exists and is not {what} that lenscope wrote; refusing to "
                            f"overwrite it. Give a new path, or move the file away yourself")
