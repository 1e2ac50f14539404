"""The generated catalog and caption corpus: deterministic by seed, labels consistent with titles,
splits by product, graded relevance as documented, and label sets equal to the default spec's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lenscope.client.catalog.reader import read_catalog, read_queries
from lenscope.client.synth.catalog import generate_catalog
from lenscope.client.synth.products import BRANDS, CATEGORIES, COLORS, MATERIALS, PATTERNS, make_product, make_title
from lenscope.client.synth.queries import GRADE_CATEGORY, GRADE_CATEGORY_COLOR, GRADE_EXACT
from lenscope.client.synth.corpus import generate_caption_corpus

N, SIZE = 60, 32
SPEC = Path(__file__).resolve().parents[2] / "export" / "specs" / "lenscope-tiny.json"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("cat") / "a", N, seed=7, image_size=SIZE).root


def test_same_seed_gives_identical_files(generated: Path, tmp_path: Path) -> None:
    again = generate_catalog(tmp_path / "b", N, seed=7, image_size=SIZE).root
    a, b = tree_bytes(generated), tree_bytes(again)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("images/")]) == 2 * N
    assert a == b


def test_different_seed_differs(generated: Path, tmp_path: Path) -> None:
    other = tree_bytes(generate_catalog(tmp_path / "c", N, seed=8, image_size=SIZE).root)
    mine = tree_bytes(generated)
    assert other["catalog.jsonl"] != mine["catalog.jsonl"]
    differing = [k for k in mine if k.startswith("images/") and mine[k] != other[k]]
    assert len(differing) == 2 * N


def test_a_product_depends_only_on_seed_and_index(generated: Path, tmp_path: Path) -> None:
    small = generate_catalog(tmp_path / "small", 5, seed=7, image_size=SIZE).root
    big = read_catalog(generated / "catalog.jsonl")
    for row in read_catalog(small / "catalog.jsonl"):
        twin = big.get(row.product_id)
        assert row.model_dump(exclude={"split"}) == twin.model_dump(exclude={"split"})
        assert (small / row.image).read_bytes() == (generated / twin.image).read_bytes()
        assert (small / row.photo).read_bytes() == (generated / twin.photo).read_bytes()


def test_images_have_the_requested_size_and_format(tmp_path: Path) -> None:
    root = generate_catalog(tmp_path / "j", 3, seed=1, image_size=48, image_format="jpeg").root
    cat = read_catalog(root / "catalog.jsonl", check_images=True)
    for row in cat:
        for path in (cat.image_path(row), cat.photo_path(row)):
            with Image.open(path) as img:
                assert (img.format, img.size, img.mode) == ("JPEG", (48, 48), "RGB")


def phrase_re(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])", re.IGNORECASE)


def test_titles_name_the_true_category_colour_and_pattern_only(generated: Path) -> None:
    rows = list(read_catalog(generated / "catalog.jsonl"))
    # titles need no pixels: check many more products than were rendered
    rows += [SimpleNamespace(title=make_title(p, 11), category=p.category, color=p.color, pattern=p.pattern,
                             material=p.material) for p in (make_product(11, i) for i in range(3000))]
    for row in rows:
        for labels, value in ((CATEGORIES, row.category), (COLORS, row.color)):
            assert phrase_re(labels[value]).search(row.title), (row.title, value)
            for other, syns in labels.items():
                if other != value:
                    assert not phrase_re(syns).search(row.title), (row.title, other)
        for other, syns in PATTERNS.items():
            if other != row.pattern:
                assert not phrase_re(syns).search(row.title), (row.title, other)
        if row.pattern != "solid":  # solid items may go unnamed; every other pattern is named
            assert phrase_re(PATTERNS[row.pattern]).search(row.title), row.title
        for other, syns in MATERIALS.items():
            if other != row.material:
                assert not phrase_re(syns).search(row.title), (row.title, other)
        assert any(b.lower() in row.title.lower() for b in BRANDS)
        assert row.category in CATEGORIES and row.color in COLORS and row.pattern in PATTERNS


def test_titles_use_varied_templates_and_synonyms(generated: Path) -> None:
    titles = [r.title.lower() for r in read_catalog(generated / "catalog.jsonl")]
    assert len(set(titles)) == len(titles)
    used = {m.group(1) for t in titles for syns in COLORS.values() for m in phrase_re(syns).finditer(t)}
    assert len(used) >= 15  # well beyond the 12 canonical names


def test_splits_are_by_product_and_queries_stay_in_their_split(generated: Path) -> None:
    cat = read_catalog(generated / "catalog.jsonl")
    split_of = {r.product_id: r.split for r in cat}
    counts = {s: sum(v == s for v in split_of.values()) for s in ("train", "val", "test")}
    assert sum(counts.values()) == N and counts == {"train": 45, "val": 6, "test": 9}
    queries = read_queries(generated / "queries.jsonl", catalog=cat)
    assert {q.split for q in queries} == {"val", "test"}
    for q in queries:
        assert {split_of[pid] for pid in q.relevance} == {q.split}
    held_out = {pid for pid, s in split_of.items() if s != "train"}
    for kind in ("image", "image+text", "text"):
        assert {q.query_id.split("-", 1)[1] for q in queries.of_type(kind)} == held_out


def test_relevance_grades_follow_the_documented_rules(generated: Path) -> None:
    cat = read_catalog(generated / "catalog.jsonl")
    queries = read_queries(generated / "queries.jsonl", catalog=cat)
    for q in queries:
        src = cat.get(q.query_id.split("-", 1)[1])
        pool = [r for r in cat if r.split == q.split and r.category == src.category]
        assert set(q.relevance) == {r.product_id for r in pool}  # every same-category product judged
        for r in pool:
            grade = q.relevance[r.product_id]
            if q.type == "text":
                assert (grade == GRADE_EXACT) <= (r.color == src.color)
                assert q.relevance[src.product_id] == GRADE_EXACT
            else:
                assert (grade == GRADE_EXACT) == (r.product_id == src.product_id)
            if grade != GRADE_EXACT:
                assert grade == (GRADE_CATEGORY_COLOR if r.color == src.color else GRADE_CATEGORY)
        if q.type == "text":
            assert phrase_re(CATEGORIES[src.category]).search(q.text) and phrase_re(COLORS[src.color]).search(q.text)
        else:
            assert q.image == src.photo


def test_label_sets_match_the_default_spec() -> None:
    spec = json.loads(SPEC.read_text())
    labels = {a["name"]: a["labels"] for a in spec["attributes"]}
    assert labels["category"] == list(CATEGORIES)
    assert labels["color"] == list(COLORS)
    assert labels["pattern"] == list(PATTERNS)


def test_attributes_are_spread_over_the_label_sets() -> None:
    products = [make_product(3, i) for i in range(600)]
    assert {p.category for p in products} == set(CATEGORIES)
    assert {p.color for p in products} == set(COLORS)
    assert {p.pattern for p in products} == set(PATTERNS)
    assert len({p.brand for p in products}) == len(BRANDS)


def test_caption_corpus_is_deterministic_and_off_distribution(tmp_path: Path) -> None:
    a = generate_caption_corpus(tmp_path / "a", 40, seed=3, image_size=SIZE)
    b = generate_caption_corpus(tmp_path / "b", 40, seed=3, image_size=SIZE)
    assert a.queries is None and tree_bytes(a.root) == tree_bytes(b.root)
    corpus = read_catalog(a.catalog, check_images=True)
    assert {r.split for r in corpus} <= {"train", "val"}
    catalog_words = phrase_re(tuple(s for syns in CATEGORIES.values() for s in syns) + BRANDS
                              + tuple(s for syns in MATERIALS.values() for s in syns))
    for row in corpus:
        assert not catalog_words.search(row.title), row.title
        assert row.category not in CATEGORIES
    c = generate_caption_corpus(tmp_path / "c", 40, seed=4, image_size=SIZE)
    assert c.catalog.read_bytes() != a.catalog.read_bytes()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_products": 0}, "n_products"),
    ({"image_size": 8}, "image_size"),
    ({"image_format": "gif"}, "image_format"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "fractions"),
])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_products": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_catalog(tmp_path / "x", **args)
