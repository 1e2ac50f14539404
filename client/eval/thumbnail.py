"""The trivial visual baseline every model is reported beside: a 16x16-thumbnail cosine.

Each image is decoded through the serving path's safe decoder (limits, EXIF orientation, RGB),
squashed whole to 16x16 (no crop, so a product off-centre still counts), centred on its own mean
and L2-normalised; the cosine of two such vectors ranks by overall colour and layout. A model that
does not beat it on photo -> product queries has learned nothing a thumbnail does not already know.
Torch-free, shared by `lenscope eval` and `lenscope model train`'s held-out table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core.modelspec import InputLimits
from lenscope.client.inputs.image_files import read_catalog_image
from lenscope.client.inputs.preprocess import ImageInputError, decode_image

SIZE = 16
LABEL = f"{SIZE}x{SIZE}-thumbnail cosine"
VARIANT = "baseline: 16x16 thumbnail"  # its row in `lenscope eval`'s photo -> product table


def thumbnail_vector(data: bytes, limits: InputLimits, size: int = SIZE) -> np.ndarray:
    """[size*size*3] float32, zero-mean, unit-norm (all zeros for a flat image)."""
    img = decode_image(data, limits).convert("RGB").resize((size, size), Image.Resampling.BOX)
    v = np.asarray(img, dtype=np.float32).reshape(-1)
    v = v - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def recall_at(queries: np.ndarray, keys: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """R@K of each query's one relevant key ``targets[i]`` among ``keys``. Ties count against it and a
    non-finite score is a miss, so a collapsed model (every embedding alike, or NaN) scores 0, never 1."""
    if len(queries) == 0:
        return {}
    sims = np.nan_to_num(queries @ keys.T, nan=-np.inf, posinf=-np.inf)
    target = sims[np.arange(len(queries)), targets][:, None]
    rank = (sims >= target).sum(axis=1) - 1
    rank[~np.isfinite(target[:, 0])] = np.iinfo(np.int64).max  # behind everything, however small the gallery
    return {f"R@{k}": round(float((rank < k).mean()), 4) for k in ks}


def thumbnail_rankings(product_ids: Sequence[str], catalog: Catalog, qset: QuerySet, queries: Sequence[Query],
                       limits: InputLimits, top_k: int, allow_outside: bool = False) -> tuple[dict[str, list[str]], str]:
    """query_id -> product ids ranked by the thumbnail cosine of the query photo against each product's
    main image (photo queries only), and a note; an unreadable image leaves the baseline out, saying why."""
    photo_queries = [q for q in queries if q.type == "image" and q.image is not None]
    if not photo_queries or not product_ids:
        return {}, "no photo queries"
    try:
        gallery = np.stack([thumbnail_vector(read_catalog_image(catalog.root, catalog.get(pid).image,
                                                                max_bytes=limits.max_image_bytes,
                                                                allow_outside=allow_outside), limits)
                            for pid in product_ids])
        photos = np.stack([thumbnail_vector(read_catalog_image(qset.root, q.image, max_bytes=limits.max_image_bytes,
                                                               allow_outside=allow_outside), limits)
                           for q in photo_queries])
    except (OSError, ImageInputError, KeyError) as err:
        return {}, f"left out: {err}"
    order = np.argsort(-(photos @ gallery.T), axis=1, kind="stable")[:, :top_k]
    ids = list(product_ids)
    return ({q.query_id: [ids[j] for j in row] for q, row in zip(photo_queries, order)},
            f"{len(photo_queries)} photo queries against {len(ids)} products' main images")
