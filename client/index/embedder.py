"""Indexing job, stage 2 (embedder): a chunk of source rows -> vectors + attribute probabilities + rejects.

Per row: the catalog image through `embed_image` (embedding + attribute head probabilities), the
title through `embed_text`, and the optional user photo through `embed_image`. What happens to a
failed input depends on whether retrying could help:

- the input itself is bad (Triton answers INVALID_ARGUMENT and the like, or the vector is not a
  unit vector): the row is rejected with a reason (a bad photo only loses the photo);
- the server is not serving (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED): the inputs are
  retried with backoff, and if they still fail the whole job stops with `EmbedderUnavailable`.
  Rejecting them would publish an index that silently lacks products because Triton restarted.

Any object with `embed_images(list[bytes])`, `embed_texts(list[str])` and `manifest()` (the
`TritonEmbedder` interface) can be plugged in; the tests use a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tenacity import RetryError, retry_if_result

from lenscope.client.core import contract
from lenscope.client.core.retry import RetryPolicy
from lenscope.client.index.reader import (
    DEFAULT_MAX_IMAGE_BYTES,
    PHOTO_PREFIX,
    Reject,
    SourceRow,
    load_image,
)

IMAGE_REJECTED = "image_rejected"
TITLE_REJECTED = "title_rejected"
BAD_EMBEDDING = "bad_embedding"
PHOTO_REJECTED = PHOTO_PREFIX + "rejected"
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
NORM_TOLERANCE = 1e-3


class Embedder(Protocol):
    """What the job needs from a model server (TritonEmbedder satisfies it)."""

    def embed_images(self, images: list[bytes]) -> list[Any]: ...  # EmbedResult-like: embedding, attributes, error

    def embed_texts(self, texts: list[str]) -> list[Any]: ...

    def manifest(self) -> dict: ...


class EmbedderUnavailable(RuntimeError):
    """The model server kept failing with transient errors: stop the job (it can be resumed)."""

    def __init__(self, status: str, message: str, inputs: int):
        self.status = status
        super().__init__(f"the model server kept answering {status} for {inputs} input(s) after retries: {message}")


@dataclass(frozen=True)
class ModelInfo:
    """What the job takes from the served model's manifest."""

    model_hash: str
    embed_dim: int
    attributes: dict[str, tuple[str, ...]]  # attribute name -> labels, in head output order
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ModelInfo":
        spec = manifest.get("spec") or {}
        try:
            return cls(
                model_hash=str(manifest["model_hash"]),
                embed_dim=int(spec["embed_dim"]),
                attributes={a["name"]: tuple(a["labels"]) for a in spec.get("attributes", ())},
                max_image_bytes=int((spec.get("limits") or {}).get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"the served model manifest lacks {err}: "
                             "cannot index without model_hash and spec.embed_dim") from err


# Transiently failing inputs are re-sent for about 12 s of backoff in all: rides out a Triton restart.
DEFAULT_RETRY = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=8.0)


@dataclass
class EmbeddedChunk:
    """One chunk's outcome. Arrays are aligned with `positions` (the accepted rows, in order)."""

    index: int
    positions: np.ndarray  # int64 [n] positions (SourceRow.position) of accepted rows
    image: np.ndarray  # float32 [n, D]
    title: np.ndarray  # float32 [n, D]
    photo: np.ndarray  # float32 [n, D]; NaN rows where the row has no usable photo
    attributes: dict[str, np.ndarray]  # attribute name -> float32 [n, L] head probabilities
    rejects: list[Reject] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def accepted(self) -> int:
        return int(self.positions.size)


def _unit(vec: Any, dim: int) -> np.ndarray | None:
    if vec is None:
        return None
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if arr.size != dim or not np.isfinite(arr).all() or abs(float(np.linalg.norm(arr)) - 1.0) > NORM_TOLERANCE:
        return None
    return arr


class ChunkEmbedder:
    """Embeds chunks of rows through an `Embedder`, turning per-input failures into rejects."""

    def __init__(self, embedder: Embedder, model: ModelInfo, root: Path, *, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] | None = None, allow_outside_images: bool = False):
        self.embedder = embedder
        self.model = model
        self.root = root
        self.retry = retry or DEFAULT_RETRY
        self._sleep = sleep or time.sleep
        self.allow_outside_images = allow_outside_images
        self._attr_outputs = {contract.attribute_output(a): a for a in model.attributes}

    def embed_chunk(self, index: int, rows: Sequence[SourceRow]) -> EmbeddedChunk:
        rejects: list[Reject] = []
        images: dict[int, bytes] = {}
        photos: dict[int, bytes] = {}
        photo_issues: dict[int, Reject] = {}  # reported only if the row itself is indexed
        read = dict(max_bytes=self.model.max_image_bytes, allow_outside=self.allow_outside_images)
        for i, s in enumerate(rows):
            data, reason, message = load_image(self.root, s.row.image, **read)
            if data is None:
                rejects.append(Reject(s.line, s.row.product_id, reason, message))
                continue
            images[i] = data
            if s.row.photo is not None:
                pdata, preason, pmessage = load_image(self.root, s.row.photo, **read)
                if pdata is None:
                    photo_issues[i] = Reject(s.line, s.row.product_id, PHOTO_PREFIX + preason, pmessage, kept=True)
                else:
                    photos[i] = pdata

        keys = list(images)
        pkeys = list(photos)
        results = self._with_retries(self.embedder.embed_images, [images[i] for i in keys] + [photos[i] for i in pkeys])
        texts = self._with_retries(self.embedder.embed_texts, [rows[i].row.title for i in keys])
        image_res = dict(zip(keys, results[: len(keys)]))
        photo_res = dict(zip(pkeys, results[len(keys):]))
        title_res = dict(zip(keys, texts))

        dim = self.model.embed_dim
        ok: list[int] = []
        img_v, title_v, photo_v = [], [], []
        attr_v: dict[str, list[np.ndarray]] = {a: [] for a in self.model.attributes}
        for i in keys:
            s = rows[i]
            pid = s.row.product_id
            r, t = image_res[i], title_res[i]
            if r.error is not None:
                rejects.append(Reject(s.line, pid, IMAGE_REJECTED, f"{s.row.image}: {r.error}"))
                continue
            if t.error is not None:
                rejects.append(Reject(s.line, pid, TITLE_REJECTED, str(t.error)))
                continue
            iv, tv = _unit(r.embedding, dim), _unit(t.embedding, dim)
            probs = self._attribute_probs(r.attributes)
            if iv is None or tv is None or probs is None:
                what = "image embedding" if iv is None else "title embedding" if tv is None else "attribute outputs"
                rejects.append(Reject(s.line, pid, BAD_EMBEDDING,
                                      f"the model returned an unusable {what} (expected finite unit vectors of dim "
                                      f"{dim} and one probability vector per attribute)"))
                continue
            pv = np.full(dim, np.nan, dtype=np.float32)
            if i in photo_issues:
                rejects.append(photo_issues[i])
            elif i in photo_res:
                p = photo_res[i]
                pu = None if p.error is not None else _unit(p.embedding, dim)
                if pu is not None:
                    pv = pu
                else:
                    reason = PHOTO_REJECTED if p.error is not None else PHOTO_PREFIX + BAD_EMBEDDING
                    rejects.append(Reject(s.line, pid, reason, f"{s.row.photo}: {p.error or 'unusable embedding'}",
                                          kept=True))
            ok.append(s.position)
            img_v.append(iv)
            title_v.append(tv)
            photo_v.append(pv)
            for a, v in probs.items():
                attr_v[a].append(v)

        def stack(vs: list[np.ndarray], width: int) -> np.ndarray:
            return np.stack(vs).astype(np.float32) if vs else np.empty((0, width), dtype=np.float32)

        rejects.sort(key=lambda r: (r.line, r.kept, r.reason))
        return EmbeddedChunk(
            index=index,
            positions=np.asarray(ok, dtype=np.int64),
            image=stack(img_v, dim),
            title=stack(title_v, dim),
            photo=stack(photo_v, dim),
            attributes={a: stack(v, len(self.model.attributes[a])) for a, v in attr_v.items()},
            rejects=rejects,
        )

    def _attribute_probs(self, outputs: dict[str, Any]) -> dict[str, np.ndarray] | None:
        probs = {}
        for out, name in self._attr_outputs.items():
            v = outputs.get(out)
            if v is None:
                return None
            arr = np.asarray(v, dtype=np.float32).reshape(-1)
            if arr.size != len(self.model.attributes[name]) or not np.isfinite(arr).all():
                return None
            probs[name] = arr
        return probs

    def _with_retries(self, call: Callable[[list], list], items: list) -> list:
        """Call, then re-send only the inputs that failed transiently, as `retry` allows."""
        results: list[Any] = [None] * len(items)
        pending = list(range(len(items)))

        def attempt() -> list[int]:
            got = list(call([items[i] for i in pending]))
            if len(got) != len(pending):
                raise RuntimeError(f"embedder returned {len(got)} results for {len(pending)} inputs")
            for i, r in zip(pending, got):
                results[i] = r
            pending[:] = [i for i in pending if _transient(results[i])]
            return pending

        if items:
            try:
                self.retry.retrying(retry_if_result(bool), sleep=self._sleep)(attempt)
            except RetryError:  # still failing after the last try: reported below
                pass
        failed = [results[i] for i in pending]
        if failed:
            raise EmbedderUnavailable(failed[0].error.status, failed[0].error.message, len(failed))
        return results


def _transient(result: Any) -> bool:
    err = getattr(result, "error", None)
    return err is not None and getattr(err, "status", None) in TRANSIENT_STATUSES
