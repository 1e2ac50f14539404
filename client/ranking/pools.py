"""Labelled candidate pools and what is drawn from them: the per-pair calibration fitted on their
raw cosines, and the calibrated features the fusion fit learns from.

A ``CandidatePool`` is one labelled query's candidates as the search engine scored them (see
``fusion_fit`` for where they come from). Every later step of the fit (fusion weights, ranking
search, modality gap) reads pools through this module, so it is separate from those steps.

**Calibration** (``fit_pool_calibration``): per modality pair, the raw cosines of the candidates
of the queries that carry that modality, labelled relevant / not, fitted with
``calibration.fit_calibration_set`` (Platt by default). Image pairs (``image_image``,
``image_title``) learn from photo-only queries and text pairs (``text_image``, ``text_title``)
from text-only queries when the file has them, so a pair is not fitted on the other modality's
evidence. Unlike the index-time fit on a catalog's own pairs, labelled queries also calibrate
``text_title`` (a query text is written independently of the title), and the negatives are the
hard candidates the re-ranker really sees, not random products.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet, fit_pair
from lenscope.client.ranking.metrics import Threshold
from lenscope.client.ranking.fusion import SIGNAL_PAIR, SIGNALS
from lenscope.client.ranking.signals import prepare_signals

QueryType = Literal["text", "image", "image+text"]
SIMILARITY_SIGNALS: tuple[str, ...] = ("visual", "image_title", "text_image", "text_title")
# which query input each similarity signal comes from
SIGNAL_INPUT = {"visual": "image", "image_title": "image", "text_image": "text", "text_title": "text"}
QUERY_INPUTS: dict[str, frozenset[str]] = {
    "image": frozenset({"image"}), "text": frozenset({"text"}), "image+text": frozenset({"image", "text"}),
}


class FitError(ValueError):
    """Not enough labelled data to fit; the message says what is missing."""


@dataclass(frozen=True)
class CandidatePool:
    """One labelled query's candidates, as the engine scored them.

    ``signals[name]`` is an (n,) float array: raw cosines for the similarity signals, the [0, 1]
    attribute agreement and popularity prior; NaN (or a missing key) = absent for that candidate.
    ``grades`` are the query's relevance grades of the candidates (0 = not judged relevant).
    """

    query_id: str
    query_type: QueryType
    product_ids: tuple[str, ...]
    signals: dict[str, np.ndarray]
    grades: np.ndarray
    relevance: dict[str, int] = field(default_factory=dict)  # all judged products (for nDCG's ideal)

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        if self.grades.shape != (n,):
            raise ValueError(f"query {self.query_id}: {self.grades.shape} grades for {n} candidates")
        for name, values in self.signals.items():
            if name not in SIGNALS:
                raise ValueError(f"query {self.query_id}: unknown signal {name!r}")
            if np.shape(values) != (n,):
                raise ValueError(f"query {self.query_id}: signal {name} has shape {np.shape(values)}, want ({n},)")

    def __len__(self) -> int:
        return len(self.product_ids)

    def labels(self, min_grade: Threshold) -> np.ndarray:
        """0/1 per candidate: grade >= threshold (``"max"``: the query's highest judged grade)."""
        if min_grade == "max":
            judged = [g for g in self.relevance.values() if g > 0]
            top = max(judged) if judged else int(self.grades.max(initial=0))
            threshold = max(top, 1)
        else:
            threshold = int(min_grade)
        return (self.grades >= threshold).astype(np.int8)


def pools_by_type(pools: Iterable[CandidatePool]) -> dict[str, list[CandidatePool]]:
    out: dict[str, list[CandidatePool]] = {}
    for p in pools:
        out.setdefault(p.query_type, []).append(p)
    return out


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def pair_data(pools: Sequence[CandidatePool], min_grade: Threshold = "max"
              ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Labelled raw cosines per modality pair (pair -> (scores, labels)) and a note per pair.

    A pair learns from the queries of its input modality alone (photo-only for image pairs,
    text-only for text pairs); only when there are none does it use photo+text queries.
    """
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes: dict[str, str] = {}
    for signal in SIMILARITY_SIGNALS:
        pair = SIGNAL_PAIR[signal]
        modality = SIGNAL_INPUT[signal]
        has = [p for p in pools if signal in p.signals and np.isfinite(p.signals[signal]).any()]
        pure = [p for p in has if QUERY_INPUTS[p.query_type] == {modality}]
        use = pure or has
        if not use:
            notes[pair] = f"skipped: no labelled query carries a {modality} input"
            continue
        scores, labels = [], []
        for p in use:
            s = np.asarray(p.signals[signal], dtype=np.float64)
            ok = np.isfinite(s)
            scores.append(s[ok])
            labels.append(p.labels(min_grade)[ok])
        sc, lb = np.concatenate(scores), np.concatenate(labels)
        kinds = sorted({p.query_type for p in use})
        notes[pair] = (f"{len(use)} {'/'.join(kinds)} queries, {int(lb.sum())} relevant and "
                       f"{int(lb.size - lb.sum())} other candidates (relevant: grade >= {min_grade})")
        data[pair] = (sc, lb)
    return data, notes


def fit_pool_calibration(pools: Sequence[CandidatePool], *, min_grade: Threshold = "max",
                         method: Literal["platt", "isotonic"] = "platt", model_hash: str | None = None
                         ) -> tuple[CalibrationSet, dict[str, str]]:
    """Fit every pair that has both relevant and irrelevant candidates; notes say why others were skipped."""
    data, notes = pair_data(pools, min_grade)
    pairs = {}
    for pair, (scores, labels) in data.items():
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            notes[pair] = f"skipped: {n_pos} relevant of {labels.size} candidates; need both kinds"
            continue
        pairs[pair] = fit_pair(pair, scores, labels, method=method)
    if not pairs:
        raise FitError("no modality pair could be calibrated: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    return CalibrationSet(model_hash=model_hash, pairs=pairs), notes


def calibrated_signals(pool: CandidatePool, calibration: CalibrationSet | None) -> dict[str, np.ndarray]:
    """What the engine fuses, by the raw-cosine rule (``signals.prepare_signals``): calibrated
    similarities where the pair has a fit, raw cosines where not, attributes and popularity as is."""
    return prepare_signals(pool.signals, calibration).values


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def feature_matrix(pools: Sequence[CandidatePool], calibration: CalibrationSet | None,
                   min_grade: Threshold = "max") -> tuple[np.ndarray, np.ndarray]:
    """(n, len(SIGNALS)) calibrated features (NaN = absent) and 0/1 labels over all candidates."""
    rows, labels = [], []
    for p in pools:
        sig = calibrated_signals(p, calibration)
        x = np.full((len(p), len(SIGNALS)), np.nan)
        for j, name in enumerate(SIGNALS):
            if name in sig:
                x[:, j] = sig[name]
        rows.append(x)
        labels.append(p.labels(min_grade))
    if not rows:
        raise FitError("no labelled candidates")
    return np.vstack(rows), np.concatenate(labels)
