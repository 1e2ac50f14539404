"""Modality-gap-aware score calibration: raw cosine per modality pair -> relevance probability.

CLIP-style encoders put image and text embeddings in two separated cones (the "modality gap"): a
matched text->image pair may score 0.30 while an unrelated image->image pair scores 0.55. Raw cosines
from different pairs are therefore not comparable, and fusing them directly lets the pair with the
widest scale dominate. Each pair gets its own monotone map fitted on labelled (score, relevant) data,
so every signal reaches the re-ranker as P(relevant | score) on one [0, 1] scale.

Two methods, both fitted with scikit-learn:
- ``platt``: logistic regression on the score (Platt 1999, ``LogisticRegression``) with Platt's
  smoothed targets (as sample weights) and a small L2 on the standardised slope. Strictly
  increasing, so it never reorders candidates within a signal; the default.
- ``isotonic``: ``IsotonicRegression`` (pool-adjacent-violators), stored as knots and applied with
  linear interpolation between them. Non-parametric, needs more data, and flattens order inside a
  plateau.

Only the fitted numbers are stored (slope/intercept or knots), so the file format is plain JSON and
applying a calibration needs numpy alone
(scikit-learn is imported only when fitting, so a search process never loads it). Everything here is pure except ``save_calibration`` /
``load_calibration``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lenscope.client.core.durable_files import atomic_write_text, read_json_object
from lenscope.client.core.validation import validation_report

SCHEMA_VERSION = 1

# query modality -> product field: image->image, image->title, text->image, text->title.
ModalityPair = Literal["image_image", "image_title", "text_image", "text_title"]
PAIRS: tuple[str, ...] = ("image_image", "image_title", "text_image", "text_title")


class CalibrationError(ValueError):
    """Unusable calibration data or file; the message names the pair or field at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------------
# Logistic regression (shared with the re-ranker's weight learning)
# --------------------------------------------------------------------------------------------------


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Overflow-free logistic; monotone non-decreasing in floating point."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def fit_logistic(
    x: np.ndarray,
    targets: np.ndarray,
    l2: float,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[np.ndarray, float]:
    """Minimise mean log-loss + l2/2 * ||w||^2 over (w, b), b unpenalised, with scikit-learn.

    ``targets`` may be soft (in [0, 1]), which is how Platt smoothing enters: each row is given to
    ``LogisticRegression`` twice, as label 1 with sample weight t and as label 0 with weight 1 - t,
    which is exactly the soft-target log-loss. sklearn minimises 1/2 ||w||^2 + C * sum(weighted
    loss), so C = 1 / (l2 * n) gives the same optimum (C = inf: unpenalised). The Newton-Cholesky
    solver is exact Newton, as suited to these small, dense, convex problems. With no feature
    column the optimum is closed-form: b = logit(mean target). Returns (w, b).
    """
    from sklearn.linear_model import LogisticRegression  # lazy: serving applies fits, it never fits

    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    n, d = x.shape
    if d == 0:
        base = float(np.clip(t.mean(), 1e-12, 1 - 1e-12))
        return np.zeros(0), math.log(base / (1 - base))
    xx = np.vstack([x, x])
    yy = np.r_[np.ones(n), np.zeros(n)]
    sw = np.r_[t, 1.0 - t]
    keep = sw > 0  # a hard target contributes one row only
    model = LogisticRegression(
        C=np.inf if l2 <= 0 else 1.0 / (l2 * n), l1_ratio=0.0, solver="newton-cholesky", tol=tol, max_iter=max_iter
    )
    model.fit(xx[keep], yy[keep], sample_weight=sw[keep])
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


# --------------------------------------------------------------------------------------------------
# Typed calibration objects
# --------------------------------------------------------------------------------------------------


class PlattParams(_Strict):
    """P(relevant | s) = sigmoid(slope * s + intercept); slope >= 0 keeps the map monotone."""

    method: Literal["platt"] = "platt"
    slope: float = Field(ge=0.0)
    intercept: float

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return sigmoid(self.slope * np.asarray(scores, dtype=np.float64) + self.intercept)


class IsotonicParams(_Strict):
    """Knots of a non-decreasing step fit; linear between knots, constant outside them."""

    method: Literal["isotonic"] = "isotonic"
    knots_x: tuple[float, ...] = Field(min_length=1)
    knots_y: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _monotone(self) -> "IsotonicParams":
        if len(self.knots_x) != len(self.knots_y):
            raise ValueError(f"knots_x has {len(self.knots_x)} values but knots_y has {len(self.knots_y)}")
        if any(b <= a for a, b in zip(self.knots_x, self.knots_x[1:])):
            raise ValueError("knots_x must be strictly increasing")
        if any(b < a for a, b in zip(self.knots_y, self.knots_y[1:])):
            raise ValueError("knots_y must be non-decreasing")
        if any(not 0.0 <= y <= 1.0 for y in self.knots_y):
            raise ValueError("knots_y must lie in [0, 1]")
        return self

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.knots_x, self.knots_y)


CalibrationParams = Annotated[PlattParams | IsotonicParams, Field(discriminator="method")]


class GapReport(_Strict):
    """Raw-cosine statistics of one pair's labelled data: the measured modality gap.

    ``separation`` (matched minus unmatched mean) is how well the raw score separates relevant from
    irrelevant; comparing ``mean_matched`` across pairs (``CalibrationSet.modality_gap``) is the gap
    between within-modality and cross-modal similarity that makes raw scores incomparable.
    """

    n_matched: int = Field(ge=0)
    n_unmatched: int = Field(ge=0)
    mean_matched: float | None
    mean_unmatched: float | None
    std_matched: float | None
    std_unmatched: float | None
    separation: float | None


class PairCalibration(_Strict):
    pair: ModalityPair
    params: CalibrationParams
    n_pos: int = Field(ge=1)
    n_neg: int = Field(ge=1)
    report: GapReport

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Raw cosine(s) -> relevance probability in [0, 1], monotone non-decreasing."""
        return self.params.apply(scores)


class CalibrationSet(_Strict):
    """Every pair's calibration, stored next to the index it was fitted for."""

    schema_version: Literal[1] = SCHEMA_VERSION
    # Hash of the model manifest whose embeddings were scored; a different model needs a refit.
    model_hash: str | None = None
    pairs: dict[ModalityPair, PairCalibration]

    @model_validator(mode="after")
    def _keys_match(self) -> "CalibrationSet":
        for key, cal in self.pairs.items():
            if cal.pair != key:
                raise ValueError(f"pairs.{key}.pair is {cal.pair!r}; it must equal its key {key!r}")
        return self

    def apply(self, pair: str, scores: np.ndarray) -> np.ndarray:
        try:
            cal = self.pairs[pair]  # type: ignore[index]
        except KeyError:
            raise CalibrationError(
                f"no calibration for modality pair {pair!r}; calibrated pairs: {sorted(self.pairs)}"
            ) from None
        return cal.apply(scores)

    def modality_gap(self, reference: str = "image_image") -> dict[str, float]:
        """Mean matched cosine of ``reference`` minus that of each pair (positive = pair scores lower)."""
        ref = self.pairs.get(reference)  # type: ignore[call-overload]
        if ref is None or ref.report.mean_matched is None:
            raise CalibrationError(f"reference pair {reference!r} has no matched-score statistics")
        return {
            p: ref.report.mean_matched - c.report.mean_matched
            for p, c in self.pairs.items()
            if c.report.mean_matched is not None
        }


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def _check_xy(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise CalibrationError(f"{what}: scores and labels must be 1-D of equal length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise CalibrationError(f"{what}: scores contain NaN or inf")
    if not np.all((y == 0) | (y == 1)):
        raise CalibrationError(f"{what}: labels must be 0 or 1")
    y = y.astype(np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise CalibrationError(
            f"{what}: need both relevant and irrelevant examples, got {n_pos} relevant of {len(y)}"
        )
    return s, y


def gap_report(matched: np.ndarray, unmatched: np.ndarray) -> GapReport:
    """Mean/std raw cosine of matched and unmatched pairs (None where a side is empty)."""
    m = np.asarray(matched, dtype=np.float64).ravel()
    u = np.asarray(unmatched, dtype=np.float64).ravel()

    def stat(a: np.ndarray, f) -> float | None:  # noqa: ANN001
        return float(f(a)) if a.size else None

    mm, mu = stat(m, np.mean), stat(u, np.mean)
    return GapReport(
        n_matched=int(m.size),
        n_unmatched=int(u.size),
        mean_matched=mm,
        mean_unmatched=mu,
        std_matched=stat(m, np.std),
        std_unmatched=stat(u, np.std),
        separation=None if mm is None or mu is None else mm - mu,
    )


def fit_platt(scores: np.ndarray, labels: np.ndarray, *, l2: float = 1e-4) -> PlattParams:
    """Platt scaling with smoothed targets t+ = (N+ + 1)/(N+ + 2), t- = 1/(N- + 2).

    The score is standardised before fitting so ``l2`` acts on a unit-free slope (cosines of
    different pairs live in very different ranges); the result is mapped back to raw-score units.
    A negative fitted slope (scores anti-correlated with relevance: broken data) is not allowed to
    invert the ranking: the constrained optimum is then slope 0, i.e. the base rate.
    """
    s, y = _check_xy(scores, labels, "fit_platt")
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = float(s.mean()), float(s.std())
    if sd == 0.0:
        sd = 1.0
    w, b = fit_logistic(((s - mu) / sd)[:, None], t, l2)
    a_std = float(w[0])
    if a_std <= 0.0:
        _, b = fit_logistic(np.zeros((len(s), 0)), t, 0.0)
        return PlattParams(slope=0.0, intercept=b)
    slope = a_std / sd
    return PlattParams(slope=slope, intercept=b - slope * mu)


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> IsotonicParams:
    """Isotonic regression of the label on the score (scikit-learn's ``IsotonicRegression``).

    sklearn merges tied scores (one point, weighted by count) and keeps each constant block's first
    and last score as knots, so knots_x is strictly increasing. Between blocks the map interpolates
    linearly instead of jumping, which keeps some ordering between plateaus; outside the fitted
    range it is constant (``out_of_bounds="clip"``). The knots are stored, not the sklearn object,
    so a saved file is plain JSON and applies with ``np.interp``.
    """
    from sklearn.isotonic import IsotonicRegression  # lazy, as in fit_logistic

    s, y = _check_xy(scores, labels, "fit_isotonic")
    iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    kx = np.asarray(iso.X_thresholds_, dtype=np.float64)
    # PAV output is non-decreasing; accumulate/clip only guard the validator against float noise.
    ky = np.clip(np.maximum.accumulate(np.asarray(iso.y_thresholds_, dtype=np.float64)), 0.0, 1.0)
    return IsotonicParams(knots_x=tuple(kx.tolist()), knots_y=tuple(ky.tolist()))


def fit_pair(
    pair: str,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    method: Literal["platt", "isotonic"] = "platt",
    l2: float = 1e-4,
) -> PairCalibration:
    """Fit one pair's calibration and its gap report from labelled raw cosines."""
    if pair not in PAIRS:
        raise CalibrationError(f"unknown modality pair {pair!r}; known: {list(PAIRS)}")
    s, y = _check_xy(scores, labels, f"pair {pair!r}")
    if method == "platt":
        params: PlattParams | IsotonicParams = fit_platt(s, y, l2=l2)
    elif method == "isotonic":
        params = fit_isotonic(s, y)
    else:
        raise CalibrationError(f"pair {pair!r}: unknown method {method!r}; use 'platt' or 'isotonic'")
    return PairCalibration(
        pair=pair,  # type: ignore[arg-type]
        params=params,
        n_pos=int(y.sum()),
        n_neg=int(len(y) - y.sum()),
        report=gap_report(s[y == 1], s[y == 0]),
    )


def fit_calibration_set(
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    method: Literal["platt", "isotonic"] | Mapping[str, Literal["platt", "isotonic"]] = "platt",
    l2: float = 1e-4,
    model_hash: str | None = None,
) -> CalibrationSet:
    """Fit every pair in ``data`` (pair -> (scores, labels)); ``method`` may differ per pair."""
    pairs = {}
    for pair, (scores, labels) in data.items():
        m = method if isinstance(method, str) else method.get(pair, "platt")
        pairs[pair] = fit_pair(pair, scores, labels, method=m, l2=l2)
    return CalibrationSet(model_hash=model_hash, pairs=pairs)


# --------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------


def save_calibration(cal: CalibrationSet, path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename): a crash never leaves a half-written file."""
    return atomic_write_text(Path(path), cal.model_dump_json(indent=2) + "\n")


def load_calibration(path: str | Path) -> CalibrationSet:
    """Read and validate a calibration file; errors name the file and the offending field."""
    path = Path(path)
    return parse_calibration(read_json_object(path, "calibration file", CalibrationError), f"calibration file {path}")


def parse_calibration(data: Mapping[str, object], source: str = "calibration") -> CalibrationSet:
    """Validate a calibration held in memory (a file's content, or the one a model manifest carries)."""
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CalibrationError(f"{source}: schema_version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
    try:
        return CalibrationSet.model_validate(data)
    except ValidationError as err:
        raise CalibrationError(validation_report(err, source)) from None
