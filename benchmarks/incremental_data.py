"""Catalogs and a stand-in model server for ``incremental.py``, cheap enough at 20k and 1M rows.

Why not ``lenscope catalog generate`` at 20k: it renders two procedural images per product (~150 ms
per product on the busy 2-core box, ~50 min for 20k). What an index build costs is per *row* (read,
hash the files, embed through Triton, index), not per distinct drawing, so:

* ``expand_catalog`` (real Triton): renders a small pool with the generator (default 500 products,
  cached), then writes N rows; row i is pool product i % P under its own product id and title, with
  its OWN image and photo files: the pool drawing with the pixels of one corner set from i, so every
  file's bytes and pixels differ and each row embeds to its own vector through the real model
  (Triton has no response cache here either way). A 64 px PNG costs well under a millisecond to write.
* ``synthetic_catalog`` + ``SyntheticEmbedder`` (1M rows, no Triton): one tiny unique file per row
  (``SYN <i>``, 1,000 per folder; a file system block each: ~4 GB of disk at 1M), no photos; the
  embedder maps bytes and titles to deterministic unit vectors (and attribute probabilities), so the
  build runs every stage (catalog read, row keys over real files, chunking, ANN build, metadata,
  ranking fit, publish) except the model. That is the point of the 1M row: reuse of stored vectors +
  ANN rebuild vs re-embedding, with embedding itself costing ~nothing (a real model at 1M on CPU: hours).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLORS = ("red", "blue", "green", "black", "white", "yellow")
CATEGORIES = ("dress", "shirt", "mug", "lamp", "shoe", "bag", "chair", "hat")
SYN_SHARD = 1000


def expand_catalog(pool_catalog: Path, n: int, out_dir: Path) -> Path:
    """``out_dir/catalog.jsonl`` with n rows built from the pool (see the module docstring); cached."""
    from PIL import Image

    catalog = out_dir / "catalog.jsonl"
    marker = out_dir / f".complete-{n}-{pool_catalog.parent.name}"
    if catalog.is_file() and marker.is_file():
        return catalog
    pool = [json.loads(line) for line in pool_catalog.read_text(encoding="utf-8").splitlines() if line.strip()]
    src = pool_catalog.parent
    pixels: dict[str, np.ndarray] = {}

    def variant(rel: str, i: int, kind: str) -> str:
        if rel not in pixels:
            with Image.open(src / rel) as im:
                pixels[rel] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        a = pixels[rel].copy()
        a[0, 0:3] = np.frombuffer(int(i).to_bytes(9, "little"), dtype=np.uint8).reshape(3, 3)  # unique per row
        rel_out = f"{kind}/{i // SYN_SHARD:04d}/{i}.png"
        (out_dir / rel_out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(out_dir / rel_out, format="PNG")
        return rel_out

    rows = []
    for i in range(n):
        base = pool[i % len(pool)]
        row = {**base, "product_id": f"{base['product_id']}-{i // len(pool):05d}",
               "title": f"{base['title']} no. {i // len(pool)}", "image": variant(base["image"], i, "images")}
        if base.get("photo"):
            row["photo"] = variant(base["photo"], i, "photos")
        rows.append(json.dumps(row) + "\n")
    catalog.write_text("".join(rows), encoding="utf-8")
    marker.write_text("ok\n")
    return catalog


def synthetic_catalog(n: int, out_dir: Path) -> Path:
    """``out_dir/catalog.jsonl`` with n rows, one tiny unique image file each, no photos; cached."""
    catalog = out_dir / "catalog.jsonl"
    marker = out_dir / f".complete-synthetic-{n}"
    if catalog.is_file() and marker.is_file():
        return catalog
    lines = []
    for i in range(n):
        rel = f"images/{i // SYN_SHARD:04d}/{i}.png"  # any extension: the synthetic model reads raw bytes
        if i % SYN_SHARD == 0:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(f"SYN {i}".encode())
        color, category = COLORS[i % len(COLORS)], CATEGORIES[(i // 7) % len(CATEGORIES)]
        lines.append(json.dumps({"product_id": f"s{i:07d}", "title": f"{color} {category} number {i}",
                                 "image": rel, "color": color, "category": category}) + "\n")
    catalog.write_text("".join(lines), encoding="utf-8")
    marker.write_text("ok\n")
    return catalog


@dataclass
class _Result:
    embedding: np.ndarray | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    error: Any = None


class SyntheticEmbedder:
    """The `Embedder` protocol without a model: bytes / text -> a deterministic unit vector.

    A title's vector leans towards the vector of its row's number (as a CLIP title leans towards its
    image), so the ranking fit's pseudo-queries have something to find; nothing about relevance is
    measured with it."""

    def __init__(self, dim: int = 128) -> None:
        from lenscope.client.core import contract

        self.dim = dim
        self.labels = {"color": COLORS, "category": CATEGORIES}
        self._outputs = {name: contract.attribute_output(name) for name in self.labels}

    def manifest(self) -> dict:
        return {"model_hash": f"synthetic-{self.dim}",
                "spec": {"embed_dim": self.dim,
                         "attributes": [{"name": k, "labels": list(v)} for k, v in self.labels.items()]}}

    def _vector(self, key: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_images(self, images: list[bytes]) -> list[_Result]:
        out = []
        for b in images:
            v = self._vector(b.split()[-1])  # "SYN <i>": the row number
            probs = {self._outputs[k]: np.full(len(labels), 1.0 / len(labels), np.float32)
                     for k, labels in self.labels.items()}
            out.append(_Result(embedding=v, attributes=probs))
        return out

    def embed_texts(self, texts: list[str]) -> list[_Result]:
        out = []
        for t in texts:
            number = next((w for w in reversed(t.split()) if w.isdigit()), t)
            v = self._vector(number.encode()) + 0.8 * self._vector(t.encode())
            out.append(_Result(embedding=(v / np.linalg.norm(v)).astype(np.float32)))
        return out

    def close(self) -> None:
        pass
