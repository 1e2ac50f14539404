"""The self-check of a large catalog runs on a stable sample: bounded, whole families, and a small
catalog change moves the sample by about the products that changed (pure logic, a fake embedder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenscope.client.index.pseudo_queries import ProductView, pseudo_queries, sample_products
from lenscope.client.index.self_check import CatalogVectors, sample_note, self_check
from lenscope.client.ranking.policy import FitBinding

COLORS = ("red", "blue", "green", "black")
CATS = ("dress", "shirt", "mug", "lamp", "shoe")


def catalog(n: int, start: int = 0) -> list[ProductView]:
    out = []
    for i in range(start, start + n):
        fam = f"p{i - i % 3}" if i % 10 < 3 and i % 3 else None  # some small variant families
        out.append(ProductView(f"p{i}", f"Item {i} {COLORS[i % 4]} {CATS[i % 5]} by Brand{i % 7}",
                               {"category": CATS[i % 5], "color": COLORS[i % 4]}, (f"ph/{i}.png",), fam))
    return out


def test_a_catalog_under_the_cap_is_used_whole() -> None:
    views = catalog(50)
    assert sample_products(views, 50, 0) == list(range(50))
    assert sample_products(views, None, 0) == list(range(50))


def test_the_sample_is_bounded_keeps_families_whole_and_is_seeded() -> None:
    views = catalog(400)
    picked = sample_products(views, 100, 0)
    assert 95 <= len(picked) <= 100 and picked == sorted(picked)
    chosen = {views[i].product_id for i in picked}
    for v in views:  # a family is in the sample entirely or not at all
        members = {u.product_id for u in views if u.family_id == v.family_id}
        assert members <= chosen or not members & chosen
    assert sample_products(views, 100, 1) != picked  # another seed, another sample


def test_a_one_percent_change_moves_the_sample_by_about_that() -> None:
    views = catalog(2000)
    before = {views[i].product_id for i in sample_products(views, 500, 0)}
    # 1 %: ten withdrawn, ten new (titles changed elsewhere do not enter the hash at all)
    changed = views[10:] + catalog(10, start=5000)
    after = {changed[i].product_id for i in sample_products(changed, 500, 0)}
    assert len(before ^ after) <= 0.05 * len(before)


def test_made_counts_what_the_per_kind_cap_left_out() -> None:
    views = catalog(120)
    made: dict[str, dict[str, int]] = {}
    qs, _ = pseudo_queries(views, max_per_kind=10, made=made)
    used: dict[str, int] = {}
    for q in qs:
        used[f"{q.part}:{q.kind}"] = used.get(f"{q.part}:{q.kind}", 0) + 1
    for part, kinds in made.items():
        for kind, n in kinds.items():
            assert used.get(f"{part}:{kind}", 0) == min(n, 10)
    assert sum(n for k in made.values() for n in k.values()) > len(qs)


def test_a_sample_keeps_the_whole_catalogs_popularity_scale() -> None:
    vec = CatalogVectors(image=np.eye(3), title=np.eye(3), popularity=np.array([1.0, 50.0, 3.0]))
    part = vec.take([0, 2])
    assert part.popularity.tolist() == [1.0, 3.0] and part.pop_max() == 50.0


@dataclass
class _Result:
    embedding: np.ndarray
    error: str | None = None
    attributes: dict | None = None


class _HashEmbedder:
    """Deterministic unit vectors from the input bytes (a stand-in for Triton)."""

    def _v(self, key: bytes) -> np.ndarray:
        rng = np.random.default_rng(int(hashlib.sha256(key).hexdigest()[:8], 16))
        v = rng.normal(size=16)
        return v / np.linalg.norm(v)

    def embed_texts(self, texts: list[str]) -> list[_Result]:
        return [_Result(self._v(t.encode())) for t in texts]

    def embed_images(self, images: list[bytes]) -> list[_Result]:
        return [_Result(self._v(b)) for b in images]


def test_self_check_reports_what_it_used_of_what_was_there(tmp_path: Path) -> None:
    views = catalog(60)
    emb = _HashEmbedder()
    for v in views:
        (tmp_path / "ph").mkdir(exist_ok=True)
        (tmp_path / v.images[0]).write_bytes(v.product_id.encode())
    vectors = CatalogVectors(image=np.stack([emb._v(v.product_id.encode() + b"m") for v in views]),
                             title=np.stack([emb._v(v.title.encode()) for v in views]),
                             popularity=np.arange(60, dtype=np.float64))
    binding = FitBinding(model_hash="m", catalog_fingerprint="c")
    capped = self_check(views, vectors, emb, tmp_path, binding=binding, max_products=30, max_per_kind=4)
    sample = capped.summary["sample"]
    assert sample["of"] == 60 and 25 <= sample["products"] <= 30
    assert sum(capped.summary["products"].values()) == sample["products"]
    assert sample["queries"] <= sample["queries_possible"]
    note = capped.policy.notes["self_check_sample"]
    assert f"{sample['products']:,} of 60 products" in note and f"of {sample['queries_possible']:,}" in note


def test_the_note_of_an_uncapped_check_says_all() -> None:
    note = sample_note({"products": 90, "of": 90, "max_products": 1000, "max_per_kind": 200, "queries": 300,
                        "queries_possible": 310})
    assert note.startswith("all 90 products; 300 of 310 pseudo-queries")
