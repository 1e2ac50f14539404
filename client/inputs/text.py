"""Control characters in user text: found, refused at read time, and escaped when shown.

A catalog title carrying ``ESC]0;...BEL`` or ``ESC[2J`` is text an operator's terminal obeys when
``lenscope search`` prints it. Catalog fields are plain single-line strings, so a row holding any C0
or C1 control character (or DEL) is refused where the catalog is read, with the field and the value
shown escaped. Tab is the one exception: it is whitespace in scraped titles and harmless on a
terminal. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ALLOWED_CONTROLS", "is_control", "escape_controls", "control_character_problem"]

ALLOWED_CONTROLS = frozenset("\t")
_SHOWN = 80  # characters of the offending value shown in a message


def is_control(ch: str) -> bool:
    """C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F)."""
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F


def escape_controls(value: str) -> str:
    """``value`` with every control character (tab included) written as ``\\xNN`` / ``\\n`` ..., so
    printing it cannot move a cursor, retitle a window or clear a screen; backslashes are doubled so
    the escaped form is unambiguous."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif is_control(ch):
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def control_character_problem(record: Mapping[str, Any] | Any) -> str | None:
    """None if no string field of ``record`` (a raw catalog row) holds a refused control character;
    else a message naming the first such field, the character's position and the escaped value."""
    if not isinstance(record, Mapping):
        return None
    for field, value in record.items():
        if not isinstance(value, str):
            continue
        at = next((i for i, ch in enumerate(value) if is_control(ch) and ch not in ALLOWED_CONTROLS), None)
        if at is not None:
            shown = escape_controls(value[:_SHOWN]) + ("..." if len(value) > _SHOWN else "")
            return (f"{escape_controls(str(field))}: control character U+{ord(value[at]):04X} at position {at} "
                    f"(terminal escape codes are refused): \"{shown}\"")
    return None
