"""The raw-cosine rule: how similarity signals reach fusion, in one place.

A similarity signal (``visual``, ``image_title``, ``text_image``, ``text_title``) reaches fusion as
its calibrated value when the calibration in force has a fit for its modality pair, and as its raw
cosine otherwise. It is never dropped: a signal without a fit still ranks, and the caller learns
which signals were calibrated (``Prepared.calibrated``) so the response can say so. The search
engine, the fitters (``pools.calibrated_signals``) and the index self-check all go through
``prepare_signals``, so what is fitted is what is served. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.fusion import SIGNAL_PAIR


@dataclass(frozen=True)
class Prepared:
    """Signal values as fusion receives them, and which similarity signals were calibrated / raw."""

    values: dict[str, np.ndarray]
    calibrated: tuple[str, ...]
    raw: tuple[str, ...]


def prepare_signals(signals: Mapping[str, np.ndarray], calibration: CalibrationSet | None) -> Prepared:
    """Calibrate every similarity signal whose pair has a fit, keep the raw cosine of the others;
    other signals (attributes, popularity) pass as they are. NaN (absent for a candidate) stays NaN."""
    values: dict[str, np.ndarray] = {}
    calibrated: list[str] = []
    raw: list[str] = []
    for name, v in signals.items():
        arr = np.asarray(v, dtype=np.float64)
        pair = SIGNAL_PAIR.get(name)
        if pair is None:
            values[name] = arr
        elif calibration is not None and pair in calibration.pairs:
            values[name] = np.where(np.isfinite(arr), calibration.apply(pair, np.nan_to_num(arr)), np.nan)
            calibrated.append(name)
        else:
            values[name] = arr
            raw.append(name)
    return Prepared(values=values, calibrated=tuple(calibrated), raw=tuple(raw))
