"""Per-pair score calibration fitted from a catalog's own labelled pairs, at index build time.

A catalog carries matched pairs for free: a product's title describes its image, and its user photo
(when the catalog has one) shows the same product as its catalog image. Unmatched pairs are the
same queries scored against other products drawn at random (seeded, so a rebuild fits the same
calibration). Per modality pair (query -> product field, see calibration.PAIRS):

- ``text_image``:  product title (as the text query) -> catalog image;  unmatched: other images
- ``image_title``: user photo (catalog image where there is none) -> title; unmatched: other titles
- ``image_image``: user photo -> catalog image; unmatched: other catalog images. Needs photos: a
  catalog image against itself scores 1 and says nothing about how queries score.
- ``text_title``:  needs a second, independently written text per product (a title against itself
  scores 1); the catalog format has one title, so this pair is skipped and the reason recorded.
  The search engine then uses the raw cosine for that signal (documented there).

Random "unmatched" products are irrelevant in expectation, not certainly (a random product may
share category and colour): the fit is slightly conservative, never inverted. Pure numpy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lenscope.client.ranking.calibration import CalibrationError, CalibrationSet, fit_pair

NO_TEXT_TITLE = ("skipped: the catalog has one title per product, and a title scored against itself is 1; "
                 "text_title needs an independently written text per product (e.g. a second title template)")


def _sample_queries(n_eligible: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return n_eligible if n_eligible.size <= cap else np.sort(rng.choice(n_eligible, cap, replace=False))


def _pair_scores(queries: np.ndarray, products: np.ndarray, q_idx: np.ndarray, negatives: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Matched: query i vs product i; unmatched: query i vs `negatives` random products j != i."""
    n = products.shape[0]
    q = queries[q_idx].astype(np.float64)
    pos = np.einsum("ij,ij->i", q, products[q_idx].astype(np.float64))
    offsets = rng.integers(1, n, size=(q_idx.size, negatives))  # j = i + offset (mod n) is never i
    neg = np.concatenate([
        np.einsum("ij,ij->i", q, products[(q_idx + offsets[:, k]) % n].astype(np.float64)) for k in range(negatives)
    ])
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size, np.int8), np.zeros(neg.size, np.int8)])
    return scores, labels


def calibration_pairs(image: np.ndarray, title: np.ndarray, photo: np.ndarray | None, *, negatives: int = 4,
                      max_queries: int = 20_000, seed: int = 0
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Labelled raw cosines per pair (pair -> (scores, labels)) and a note per pair saying how it was built."""
    n = image.shape[0]
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    notes: dict[str, str] = {"text_title": NO_TEXT_TITLE}
    if n < 2:
        for p in ("text_image", "image_title", "image_image"):
            notes[p] = f"skipped: {n} indexed product(s); unmatched pairs need at least 2"
        return {}, notes
    has_photo = np.zeros(n, bool) if photo is None else np.isfinite(photo).all(axis=1)
    everyone = np.arange(n)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    rng = np.random.default_rng([seed, 0])
    q_idx = _sample_queries(everyone, max_queries, rng)
    data["text_image"] = _pair_scores(title, image, q_idx, negatives, rng)
    notes["text_image"] = f"title -> its catalog image, {q_idx.size} matched, {negatives} random unmatched each"

    rng = np.random.default_rng([seed, 1])
    query_images = image if photo is None else np.where(has_photo[:, None], photo, image)
    q_idx = _sample_queries(everyone, max_queries, rng)
    data["image_title"] = _pair_scores(query_images, title, q_idx, negatives, rng)
    n_ph = int(has_photo[q_idx].sum())
    notes["image_title"] = (f"user photo ({n_ph}) or catalog image ({q_idx.size - n_ph}) -> its title, "
                            f"{negatives} random unmatched each")

    rng = np.random.default_rng([seed, 2])
    with_photo = np.flatnonzero(has_photo)
    if with_photo.size:
        q_idx = _sample_queries(with_photo, max_queries, rng)
        data["image_image"] = _pair_scores(photo, image, q_idx, negatives, rng)  # type: ignore[arg-type]
        notes["image_image"] = (f"user photo -> its catalog image, {q_idx.size} matched, "
                                f"{negatives} random unmatched each")
    else:
        notes["image_image"] = "skipped: no usable user photos in the catalog (a catalog image vs itself scores 1)"
    return data, notes


def fit_catalog_calibration(data: dict[str, tuple[np.ndarray, np.ndarray]], notes: dict[str, str], *,
                            method: Literal["platt", "isotonic"] = "platt", model_hash: str | None = None
                            ) -> tuple[CalibrationSet | None, dict[str, str]]:
    """Fit each pair on its own (one unusable pair does not sink the others); None if no pair could be fit."""
    notes = dict(notes)
    pairs = {}
    for pair, (scores, labels) in data.items():
        try:
            pairs[pair] = fit_pair(pair, scores, labels, method=method)
        except CalibrationError as err:
            notes[pair] = f"skipped: fit failed: {err}"
    if not pairs:
        return None, notes
    return CalibrationSet(model_hash=model_hash, pairs=pairs), notes


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
