"""The modality gap: how far each pair's matched cosines sit from the reference pair's, before and
after calibration (``gap_table`` from a fitted calibration set, ``gap_samples`` from labelled
pools). A report on the fit, not part of it, hence its own module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.metrics import Threshold
from lenscope.client.ranking.fusion import SIGNAL_PAIR
from lenscope.client.ranking.pools import QUERY_INPUTS, SIGNAL_INPUT, SIMILARITY_SIGNALS, CandidatePool


def gap_table(calibration: CalibrationSet, reference: str = "image_image") -> dict[str, dict[str, float | None]]:
    """Per pair: raw matched / unmatched mean cosine of the fitting data, the calibrated values of
    those means, and the gap to the reference pair's matched mean before and after calibration."""
    out: dict[str, dict[str, float | None]] = {}
    ref = calibration.pairs.get(reference)  # type: ignore[call-overload]
    ref_raw = ref.report.mean_matched if ref is not None else None
    ref_cal = float(ref.apply(np.array([ref_raw]))[0]) if ref is not None and ref_raw is not None else None
    for pair, c in calibration.pairs.items():
        r = c.report
        cm = None if r.mean_matched is None else float(c.apply(np.array([r.mean_matched]))[0])
        cu = None if r.mean_unmatched is None else float(c.apply(np.array([r.mean_unmatched]))[0])
        out[pair] = {
            "raw_matched": r.mean_matched, "raw_unmatched": r.mean_unmatched,
            "calibrated_at_matched_mean": cm, "calibrated_at_unmatched_mean": cu,
            f"gap_to_{reference}_raw": None if ref_raw is None or r.mean_matched is None else ref_raw - r.mean_matched,
            f"gap_to_{reference}_calibrated": None if ref_cal is None or cm is None else ref_cal - cm,
        }
    return out


def gap_samples(pools: Sequence[CandidatePool], calibration: CalibrationSet | None, min_grade: Threshold = "max"
                ) -> dict[str, dict[str, np.ndarray]]:
    """Per pair: raw and calibrated values of matched (relevant) and unmatched (grade 0) candidates
    (partially relevant ones left out), from each signal's pure-modality queries (as ``pair_data``)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for signal in SIMILARITY_SIGNALS:
        pair = SIGNAL_PAIR[signal]
        modality = SIGNAL_INPUT[signal]
        has = [p for p in pools if signal in p.signals and np.isfinite(p.signals[signal]).any()]
        use = [p for p in has if QUERY_INPUTS[p.query_type] == {modality}] or has
        if not use:
            continue
        m, u = [], []
        for p in use:
            s = np.asarray(p.signals[signal], dtype=np.float64)
            lab = p.labels(min_grade).astype(bool)
            ok = np.isfinite(s)
            m.append(s[ok & lab])
            u.append(s[ok & (p.grades == 0)])
        raw_m, raw_u = np.concatenate(m), np.concatenate(u)
        entry = {"raw_matched": raw_m, "raw_unmatched": raw_u}
        if calibration is not None and pair in calibration.pairs:
            entry["calibrated_matched"] = calibration.apply(pair, raw_m)
            entry["calibrated_unmatched"] = calibration.apply(pair, raw_u)
        out[pair] = entry
    return out
