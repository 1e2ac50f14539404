"""The trivial visual baseline every model is reported beside: a 16x16-thumbnail cosine.

Each image is decoded through the serving path's safe decoder (limits, EXIF orientation, RGB),
squashed whole to 16x16 (no crop, so a product off-centre still counts), centred on its own mean
and L2-normalised; the cosine of two such vectors ranks by overall colour and layout. A model that
does not beat it on photo -> product queries has learned nothing a thumbnail does not already know.
Torch-free, shared by `lenscope eval` and `lenscope model train`'s held-out table.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lenscope.client.core.modelspec import InputLimits
from lenscope.client.inputs.preprocess import decode_image

SIZE = 16
LABEL = f"{SIZE}x{SIZE}-thumbnail cosine"


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
    rank[~np.isfinite(target[:, 0])] = keys.shape[0]
    return {f"R@{k}": round(float((rank < k).mean()), 4) for k in ks}
