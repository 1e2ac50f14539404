"""The calibration summary an index records (``index_info.json["calibration"]``).

The calibration itself is fitted by the index build's self-check (``self_check.py``) on
pseudo-queries made from the catalog, or comes from a bound / supplied fit (``ranking_setup.py``).
A signal whose pair it lacks fuses as its raw cosine (``ranking/signals.py``).
"""

from __future__ import annotations

from lenscope.client.ranking.calibration import CalibrationSet


def gap_summary(cal: CalibrationSet | None) -> dict:
    """Mean matched / unmatched raw cosine per pair, and the modality gap against image_image."""
    if cal is None:
        return {}
    out: dict = {
        "pairs": {p: c.report.model_dump() for p, c in cal.pairs.items()},
    }
    if "image_image" in cal.pairs:
        out["modality_gap_vs_image_image"] = cal.modality_gap("image_image")
    return out
