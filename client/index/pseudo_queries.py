"""Labelled pseudo-queries made from a catalog alone, for the index build's self-checked fit.

The catalog says, without any user query log: a product's title describes it, its extra photos show
it, and an attribute phrase ("red dress") names every product with those attribute values. So:

- ``title``  (text):        the title with one word left out -> its product. The word is left out
  so the query is not the very text whose embedding the ``text_title`` signal compares with.
- ``photo``  (image):       an extra photo -> its product and its look-alikes, graded by how
  many of the product's attribute values they share: the product n + 1 (n: its number of
  attributes), a product sharing k of them k (a product without attributes: grade 1, itself only).
  Graded rather than "all values shared or nothing": with four attributes hardly another product
  shares all four, so the ranking of the near look-alikes (same category and colour, other
  material) was invisible to the fit, and a signal that ranks them (the attribute heads) could
  not show what it adds.
- ``phrase`` (text):        one or two attribute values -> every product that has them (grade 1).
- ``photo+phrase`` (image+text): an extra photo + one of its product's attribute values -> the
  product (grade 2) and the products that have that value and share another value with it (1).
- ``photo+title`` (image+text): an extra photo + a word of its title that names no attribute (a
  brand, a material, a model name) -> the product (2) and the products whose titles have that word
  and that share an attribute value with it (1): what a shopper adds that the photo cannot show.
- ``photo+variant`` (image+text), the composing query: an extra photo + ANOTHER value of one of its
  product's attributes ("red" for a photo of the black cap) -> the product that differs from it in
  that value only: its colour/size variant (``variant_of`` family) of that value, else the products
  with that value and all its other values (2); products with that value sharing another of its
  values (1). The photo says which product, the text says which variant; a ranking that ignores
  either loses these queries, which is what "the text refines the photo" means.

A large catalog is checked on a sample (``sample_products``): at most ``max_products`` products,
whole families, chosen by a seeded hash of the family id (the lowest hashes), so the sample of a
catalog that changed by 1 % is that catalog's sample give or take about 1 % of its products, and
the check's cost stops growing with the catalog (making the queries compares every photo's product
with every other product: ~7 s at 1,000 products, ~30 s at 2,000, ~3.5 min at 4,000 of the 20k
incremental benchmark's catalog on the busy 2-core box; the full build of 20,000 did not finish in
28 min). The queries per kind are capped anyway (``max_per_kind`` per part: 200), and a sample of
1,000 products already yields that many of every kind, so the sample costs the fit no queries;
the sampled products are what each query is ranked among and judged against.

Products are split (seeded, by product family: a product and its ``variant_of`` variants stay
together, so a composing query and its variant are in one part) into a fit part and a held-out
part; every query and its relevance live inside one part, and each part's queries are ranked among
that part's products only, so nothing the fit saw is scored as held-out evidence. Pure functions over ``ProductView``,
a neutral view of a product (id, title, attributes, extra images); ``views_from_rows`` adapts the
current catalog rows to it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from lenscope.client.index.reader import SourceRow

FIT, HELD_OUT = "fit", "held_out"
KIND_TYPE = {"title": "text", "phrase": "text", "photo": "image", "photo+phrase": "image+text",
             "photo+title": "image+text", "photo+variant": "image+text"}
MAX_PER_KIND = 200  # pseudo-queries of one kind in one part, at most (a seeded sample beyond)
STOPWORDS = frozenset({"a", "an", "and", "by", "for", "from", "in", "of", "on", "the", "with"})


@dataclass(frozen=True)
class ProductView:
    """What pseudo-queries need of a product; ``images`` are its extra images (not the main one);
    ``family`` is the product its variants hang off (``variant_of``'s root; None: itself)."""

    product_id: str
    title: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    family: str | None = None

    @property
    def family_id(self) -> str:
        return self.family or self.product_id


@dataclass(frozen=True)
class PseudoQuery:
    query_id: str
    kind: str  # one of KIND_TYPE
    part: str  # fit | held_out
    text: str | None
    image: str | None  # catalog path of an extra image
    relevance: dict[str, int]

    @property
    def query_type(self) -> str:
        return KIND_TYPE[self.kind]


def views_from_rows(rows: Sequence[SourceRow]) -> list[ProductView]:
    """The adapter from catalog rows: every attribute the catalog gives, every image but the main one
    (the main image is what the index embeds, so it cannot be a query for its own product), and the
    root of its ``variant_of`` chain as its family."""
    parent = {s.row.product_id: s.row.variant_of for s in rows}

    def root(pid: str) -> str | None:
        seen = {pid}
        while parent.get(pid) is not None and parent[pid] in parent and parent[pid] not in seen:
            pid = parent[pid]
            seen.add(pid)
        return pid if len(seen) > 1 else None

    return [ProductView(product_id=s.row.product_id, title=s.row.title, attributes=dict(s.row.attributes),
                        images=tuple(img.path for img in s.row.images[1:]), family=root(s.row.product_id))
            for s in rows]


def catalog_fingerprint(views: Sequence[ProductView]) -> str:
    """Identifies the indexed products (ids, titles, attributes): a fit is bound to it."""
    payload = sorted([v.product_id, v.title, sorted(v.attributes.items())] for v in views)
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def sample_products(views: Sequence[ProductView], max_products: int | None, seed: int) -> list[int]:
    """Indices (catalog order) of the products a self-check uses: all of them up to
    ``max_products`` (None: no cap), else whole families by ascending seeded hash of the family id
    while they fit (a family larger than the room left is passed over). Stable: a product that is
    added, changed or withdrawn moves the sample by its own family only."""
    if max_products is None or len(views) <= max_products:
        return list(range(len(views)))
    families: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(views):
        families[v.family_id].append(i)

    def h(fid: str) -> str:
        return hashlib.sha256(f"{seed}:sample:{fid}".encode()).hexdigest()

    picked: list[int] = []
    for fid in sorted(families, key=h):
        if len(picked) + len(families[fid]) <= max_products:
            picked += families[fid]
        if len(picked) == max_products:
            break
    return sorted(picked)


def split_parts(views: Sequence[ProductView], held_out_fraction: float, seed: int) -> dict[str, str]:
    """product id -> fit | held_out, by a seeded hash of the product's family id (a product without
    variants: its own id), so variants share a part; stable when products are added."""
    def u(pid: str) -> float:
        return int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:12], 16) / 16 ** 12
    return {v.product_id: HELD_OUT if u(v.family_id) < held_out_fraction else FIT for v in views}


def _drop_one_word(title: str, rng: np.random.Generator) -> str | None:
    words = title.split()
    if len(words) < 3:
        return None
    i = int(rng.integers(len(words)))
    return " ".join(words[:i] + words[i + 1:])


def _words(title: str) -> frozenset[str]:
    return frozenset(w for w in (t.strip(".,;:!?()[]|/-'\"").lower() for t in title.split()) if len(w) >= 3)


def _phrase(attrs: Sequence[tuple[str, str]], order: Sequence[str]) -> str:
    # later catalog attributes first: "red dress" from (category=dress, color=red)
    rank = {a: i for i, a in enumerate(order)}
    return " ".join(v for a, v in sorted(attrs, key=lambda av: -rank.get(av[0], 0)))


def _part_queries(views: Sequence[ProductView], part: str, order: Sequence[str], rng: np.random.Generator,
                  max_per_kind: int, made: dict[str, int] | None = None) -> list[PseudoQuery]:
    out: list[PseudoQuery] = []
    having: dict[tuple[str, str], set[str]] = defaultdict(set)
    for v in views:
        for a, val in v.attributes.items():
            having[(a, val)].add(v.product_id)

    def cap(qs: list[PseudoQuery]) -> list[PseudoQuery]:
        if made is not None and qs:
            made[qs[0].kind] = made.get(qs[0].kind, 0) + len(qs)
        if len(qs) <= max_per_kind:
            return qs
        keep = sorted(rng.choice(len(qs), max_per_kind, replace=False).tolist())
        return [qs[i] for i in keep]

    titles = []
    for v in views:
        text = _drop_one_word(v.title, rng)
        if text:
            titles.append(PseudoQuery(f"{part}:title:{v.product_id}", "title", part, text, None, {v.product_id: 1}))
    out += cap(titles)

    photos, mixed, worded, composed = [], [], [], []
    words_of = {v.product_id: _words(v.title) for v in views}
    for v in views:
        alike = _shared_counts(v, having)
        for j, img in enumerate(v.images):
            rel = alike | {v.product_id: len(v.attributes) + 1}
            photos.append(PseudoQuery(f"{part}:photo:{v.product_id}:{j}", "photo", part, None, img, rel))
            if v.attributes:
                items = sorted(v.attributes.items())
                a, val = items[int(rng.integers(len(items)))]
                near = {pid for b, w in items if b != a for pid in having[(b, w)]} & having[(a, val)]
                rel = {pid: 1 for pid in near} | {v.product_id: 2}
                mixed.append(PseudoQuery(f"{part}:photo+phrase:{v.product_id}:{j}", "photo+phrase", part, val, img,
                                         rel))
            values = {w.lower() for w in v.attributes.values()}
            candidates = sorted(w for w in words_of[v.product_id] if w not in values and w not in STOPWORDS)
            if candidates:
                word = candidates[int(rng.integers(len(candidates)))]
                near = {u.product_id for u in views if word in words_of[u.product_id]
                        and set(u.attributes.items()) & set(v.attributes.items())}
                rel = {pid: 1 for pid in near} | {v.product_id: 2}
                worded.append(PseudoQuery(f"{part}:photo+title:{v.product_id}:{j}", "photo+title", part, word, img,
                                          rel))
            composed += _variant_queries(v, j, img, part, views, having, rng)
    out += cap(photos) + cap(mixed) + cap(worded) + cap(composed)

    phrases = []
    n = len(views)
    singles = sorted(having)
    pairs = sorted({tuple(sorted(c)) for v in views for c in combinations(sorted(v.attributes.items()), 2)})
    for combo in [(s,) for s in singles] + list(pairs):
        rel_ids = set.intersection(*(having[av] for av in combo))
        if 0 < len(rel_ids) < n:  # a phrase every product has ranks nothing
            text = _phrase(combo, order)
            phrases.append(PseudoQuery(f"{part}:phrase:{text}", "phrase", part, text, None,
                                       {pid: 1 for pid in sorted(rel_ids)}))
    out += cap(phrases)
    return out


def _shared_counts(v: ProductView, having: Mapping[tuple[str, str], set[str]]) -> dict[str, int]:
    """Every other product sharing at least one of v's attribute values -> how many it shares."""
    counts: dict[str, int] = defaultdict(int)
    for av in v.attributes.items():
        for pid in having[av]:
            if pid != v.product_id:
                counts[pid] += 1
    return dict(counts)


def _variant_queries(v: ProductView, j: int, img: str, part: str, views: Sequence[ProductView],
                     having: Mapping[tuple[str, str], set[str]], rng: np.random.Generator) -> list[PseudoQuery]:
    """``photo+variant`` queries for one photo: one per variant of its family that differs from it in
    one attribute value, else one for a random other value with a look-alike of that value."""
    items = dict(v.attributes)
    if not items:
        return []

    def query(a: str, value: str, targets: set[str], tag: str) -> PseudoQuery:
        others = [(b, w) for b, w in items.items() if b != a]
        near = {pid for b, w in others for pid in having.get((b, w), ())} & having[(a, value)]
        rel = {pid: 1 for pid in near - {v.product_id}} | {pid: 2 for pid in targets}
        return PseudoQuery(f"{part}:photo+variant:{v.product_id}:{j}:{tag}", "photo+variant", part, value, img, rel)

    out = []
    for u in views:
        if u.product_id == v.product_id or u.family_id != v.family_id:
            continue
        diff = [(a, w) for a, w in u.attributes.items() if items.get(a) != w]
        if len(diff) == 1 and diff[0][0] in items:
            out.append(query(diff[0][0], diff[0][1], {u.product_id}, u.product_id))
    if out:
        return out
    options = []
    for a, val in sorted(items.items()):
        rest = [(b, w) for b, w in items.items() if b != a]
        for (b, w), ids in sorted(having.items()):
            if b != a or w == val:
                continue
            twins = {pid for pid in ids if all(pid in having[bw] for bw in rest)} if rest else set()
            if twins:
                options.append((a, w, twins))
    if not options:
        return []
    a, w, twins = options[int(rng.integers(len(options)))]
    return [query(a, w, twins, f"{a}={w}")]


def pseudo_queries(views: Sequence[ProductView], *, held_out_fraction: float = 0.3, seed: int = 0,
                   max_per_kind: int = MAX_PER_KIND, made: dict[str, dict[str, int]] | None = None
                   ) -> tuple[list[PseudoQuery], dict[str, str]]:
    """Pseudo-queries of both parts and the product -> part map (see the module docstring).
    ``made``, when given, receives per part the number of queries of each kind made before the
    ``max_per_kind`` cap (what was possible; the returned queries are what is used)."""
    parts = split_parts(views, held_out_fraction, seed)
    order: list[str] = []
    for v in views:
        order += [a for a in v.attributes if a not in order]
    queries: list[PseudoQuery] = []
    for k, part in enumerate((FIT, HELD_OUT)):
        members = [v for v in views if parts[v.product_id] == part]
        queries += _part_queries(members, part, order, np.random.default_rng([seed, k]), max_per_kind,
                                 made.setdefault(part, {}) if made is not None else None)
    return queries, parts
