"""Labelled feature rows read from a JSONL file (logged searches + clicks, or anything else): the
one piece of the fusion fit that does file I/O, for fitting weights without candidate pools.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lenscope.client.ranking.fusion import SIGNALS
from lenscope.client.ranking.pools import FitError


def read_labelled_rows(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """JSONL, one candidate per line: ``{"label": 0|1, "<signal>": value, ...}``; signal values are
    the [0, 1] values ``fuse`` receives (calibrated similarities, attribute agreement, popularity);
    a signal left out (or null) is absent for that row. Returns (features with NaN, labels)."""
    path = Path(path)
    rows, labels, problems = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {n}: not JSON: {err.msg}")
                continue
            if not isinstance(rec, dict) or rec.get("label") not in (0, 1):
                problems.append(f"line {n}: needs an object with label 0 or 1")
                continue
            unknown = sorted(set(rec) - set(SIGNALS) - {"label", "query_id", "product_id"})
            if unknown:
                problems.append(f"line {n}: unknown field(s) {unknown}; signals: {list(SIGNALS)}")
                continue
            x = []
            for s in SIGNALS:
                v = rec.get(s)
                if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                    problems.append(f"line {n}: {s} must be a finite number or null")
                    v = None
                x.append(np.nan if v is None else float(v))
            rows.append(x)
            labels.append(int(rec["label"]))
    if problems:
        shown = "\n  - ".join(problems[:20])
        raise FitError(f"{path}: {len(problems)} problem(s):\n  - {shown}")
    if not rows:
        raise FitError(f"{path}: no rows")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.int8)
