"""Fused cross-modal re-ranking: calibrated signals -> one score with a per-signal breakdown.

score = bias + sum_i w_i' * s_i over the signals present for a candidate, where every s_i is on a
[0, 1] "higher is more relevant" scale (calibrated probabilities, attribute agreement, popularity
prior) and w_i' are the file weights renormalised over the present signals:

    w_i' = w_i * (sum of all weights) / (sum of weights of present signals)

Why renormalise instead of just dropping: a text-only query has no visual signal, and a product may
lack a title embedding. Dropping would shrink those scores by the missing weight mass, so scores of
different query types would not be on one scale, and a candidate missing one signal would lose to an
equally good candidate that has it. Renormalising is the same as imputing each missing signal with the
weighted mean of the candidate's present signals. This is why weights must be >= 0 (and why
``learn_weights`` fits them under that constraint): every signal is a relevance score, and a negative
weight would make the renormalisation meaningless.

Absence is per candidate: NaN in a signal array means "not available for this candidate"; a signal
left out of the mapping (or None) is absent for the whole query. Pure numpy, no I/O except the
weights file functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lenscope.client.core.durable_files import atomic_write_text, read_json_object
from lenscope.client.core.validation import validation_report
from lenscope.client.ranking.calibration import fit_logistic, sigmoid

SCHEMA_VERSION = 1

# visual: query image vs product image; image_title: query image vs product title embedding;
# text_image / text_title: query text vs product image / title embedding (all calibrated);
# attributes: attribute agreement; popularity: log-scaled prior; text_facets: the share of the catalog
# facet values the query's words name that a product has (``text_facets``; last so older files and
# feature columns keep their positions).
SIGNALS: tuple[str, ...] = ("visual", "image_title", "text_image", "text_title", "attributes", "popularity",
                            "text_facets")

# Which calibration pair (client.calibration.PAIRS) feeds each similarity signal.
SIGNAL_PAIR: dict[str, str] = {
    "visual": "image_image",
    "image_title": "image_title",
    "text_image": "text_image",
    "text_title": "text_title",
}


class WeightsError(ValueError):
    """Unusable fusion weights (file or values); the message names the field at fault."""


class FusionWeights(BaseModel):
    """Per-signal fusion weights plus bias; the JSON weights file is this model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    bias: float = 0.0
    visual: float = Field(1.0, ge=0.0)
    image_title: float = Field(0.3, ge=0.0)
    text_image: float = Field(1.0, ge=0.0)
    text_title: float = Field(0.7, ge=0.0)
    attributes: float = Field(0.3, ge=0.0)
    popularity: float = Field(0.1, ge=0.0)
    # 0 by default: weights written before the signal existed rank exactly as they did
    text_facets: float = Field(0.0, ge=0.0)

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, s) for s in SIGNALS], dtype=np.float64)


def parse_weights(data: Mapping[str, object], source: str = "<dict>") -> FusionWeights:
    try:
        return FusionWeights.model_validate(data)
    except ValidationError as err:
        raise WeightsError(validation_report(err, f"fusion weights {source}")) from None


def load_weights(path: str | Path) -> FusionWeights:
    path = Path(path)
    return parse_weights(read_json_object(path, "fusion weights file", WeightsError), str(path))


def save_weights(weights: FusionWeights, path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename)."""
    return atomic_write_text(Path(path), weights.model_dump_json(indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Signals that are not calibrated cosines
# --------------------------------------------------------------------------------------------------


def attribute_agreement(
    query_probs: Mapping[str, np.ndarray], candidate_labels: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Mean over attributes of the query's predicted probability of each candidate's label.

    ``query_probs[attr]`` is the head's probability vector over that attribute's labels;
    ``candidate_labels[attr]`` holds each candidate's label index (-1 = unknown). Only attributes in
    both mappings count, and per candidate only those with a known label. The result is the expected
    fraction of attributes on which the query agrees with the product: in [0, 1], comparable across
    products with different numbers of known attributes (a log-likelihood would not be, and one
    confidently wrong attribute would swamp the rest). NaN where no attribute can be compared.
    """
    attrs = [a for a in query_probs if a in candidate_labels]
    if not attrs:
        n = len(next(iter(candidate_labels.values()))) if candidate_labels else 0
        return np.full(n, np.nan)
    total = None
    count = None
    for a in attrs:
        probs = np.asarray(query_probs[a], dtype=np.float64).ravel()
        labels = np.asarray(candidate_labels[a], dtype=np.int64).ravel()
        if labels.size and labels.max(initial=-1) >= probs.size:
            raise ValueError(f"attribute {a!r}: label index {labels.max()} out of range for {probs.size} labels")
        known = labels >= 0
        p = np.where(known, probs[np.where(known, labels, 0)], 0.0)
        total = p if total is None else total + p
        count = known.astype(np.int64) if count is None else count + known
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def encode_labels(values: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Product label strings -> label indices for ``attribute_agreement`` (-1 for None or unknown)."""
    index = {lab: i for i, lab in enumerate(labels)}
    return np.fromiter((index.get(v, -1) if v is not None else -1 for v in values), np.int64, len(values))


def popularity_prior(counts: np.ndarray, catalog_max: float) -> np.ndarray:
    """log1p(count) / log1p(catalog_max), clipped to [0, 1].

    Log scale because popularity is heavy-tailed (a bestseller must not bury relevance); normalised
    by the catalog-wide maximum, not the candidates', so a product's prior does not depend on what
    else was retrieved. Unknown (NaN) or negative counts get the floor 0: no evidence of popularity,
    rather than "absent" (which would renormalise and reward missing data).
    """
    c = np.asarray(counts, dtype=np.float64)
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    if catalog_max <= 0:
        return np.zeros_like(c)
    return np.clip(np.log1p(c) / math.log1p(catalog_max), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fused:
    """Fused scores of n candidates (input order) and their per-signal contributions."""

    scores: np.ndarray  # (n,) bias + contributions.sum(axis=1)
    contributions: np.ndarray  # (n, len(SIGNALS)); 0.0 where the signal is absent
    present: np.ndarray  # (n, len(SIGNALS)) bool
    bias: float

    def order(self, top_k: int | None = None) -> np.ndarray:
        """Candidate indices best first; ties keep input (retrieval) order."""
        idx = np.argsort(-self.scores, kind="stable")
        return idx if top_k is None else idx[:top_k]

    def breakdown(self, i: int) -> dict[str, float]:
        """Per-signal contributions of candidate i plus "bias"; the values sum to ``scores[i]``."""
        out = {"bias": self.bias}
        for j, name in enumerate(SIGNALS):
            if self.present[i, j]:
                out[name] = float(self.contributions[i, j])
        return out


def fuse(signals: Mapping[str, np.ndarray | None], weights: FusionWeights) -> Fused:
    """Fuse per-candidate signal arrays (name -> (n,), NaN = absent) into scores with breakdowns."""
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; known: {list(SIGNALS)}")
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in signals.items() if v is not None}
    lengths = {k: a.size for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"signal arrays differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    values = np.full((n, len(SIGNALS)), np.nan)
    for j, name in enumerate(SIGNALS):
        if name in arrays:
            values[:, j] = arrays[name]
    present = np.isfinite(values)
    w = weights.vector()
    w_present = present @ w
    scale = np.divide(w.sum(), w_present, out=np.zeros(n), where=w_present > 0)
    contributions = np.where(present, np.nan_to_num(values) * w[None, :] * scale[:, None], 0.0)
    scores = weights.bias + contributions.sum(axis=1)
    return Fused(scores=scores, contributions=contributions, present=present, bias=weights.bias)


# --------------------------------------------------------------------------------------------------
# Learning the weights
# --------------------------------------------------------------------------------------------------


def learn_weights(
    features: np.ndarray,
    labels: np.ndarray,
    signals: Sequence[str] = SIGNALS,
    *,
    l2: float = 1e-3,
) -> FusionWeights:
    """Fit bias and weights by L2-regularised logistic regression, constrained to weights >= 0.

    ``features`` is (n, len(signals)) of the same [0, 1] signals ``fuse`` receives, on complete
    rows (no NaN: train on the query mix you serve, e.g. text+image queries for all signals);
    signals not listed get weight 0. The non-negativity is enforced by an active-set loop: fit the
    free weights, pin the most negative one at 0, refit; re-free a pinned weight whose gradient says
    the loss would drop if it grew. When every signal with a non-zero weight is present, ``fuse``
    applies no renormalisation and returns exactly the fitted logit: sigmoid(score) is then a
    relevance probability.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    signals = tuple(signals)
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; known: {list(SIGNALS)}")
    if len(set(signals)) != len(signals):
        raise ValueError(f"signals must be unique, got {list(signals)}")
    if x.ndim != 2 or x.shape[1] != len(signals) or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (n, {len(signals)}) and labels (n,), got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf; learn_weights needs complete rows")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    t = y.astype(np.float64)
    if t.sum() in (0, len(t)):
        raise ValueError("labels need both relevant (1) and irrelevant (0) examples")

    d = len(signals)
    free = np.ones(d, dtype=bool)
    w = np.zeros(d)
    b = 0.0
    for _ in range(4 * d + 4):
        w = np.zeros(d)
        wf, b = fit_logistic(x[:, free], t, l2)
        w[free] = wf
        if np.any(w[free] < 0):
            worst = int(np.argmin(np.where(free, w, np.inf)))
            free[worst] = False
            continue
        w = np.maximum(w, 0.0)
        p = sigmoid(x @ w + b)
        grad = x.T @ (p - t) / len(t)  # + l2 * w, which is 0 on pinned weights
        pinned_neg = np.where(~free & (grad < -1e-9), grad, 0.0)
        if not pinned_neg.any():
            break
        free[int(np.argmin(pinned_neg))] = True
    values = {s: float(v) for s, v in zip(signals, w)}
    values.update({s: 0.0 for s in SIGNALS if s not in values})
    return FusionWeights(bias=float(b), **values)
