"""One wording for a pydantic validation error in a file or value a user gave: the thing, then one
line per problem naming the field path. Shared by the model spec, calibration and fusion-weight
readers so that their messages read alike."""

from __future__ import annotations

from pydantic import ValidationError


def validation_report(err: ValidationError, what: str) -> str:
    """``invalid <what>:`` followed by ``  - <field.path>: <message>`` for each problem."""
    lines = [f"invalid {what}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)
