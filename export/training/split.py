"""The product-level held-out split a run is judged on.

A catalog that carries ``split`` values trains on ``train`` and is judged on ``val`` (``test`` is never
touched). A catalog without them (a shop's real catalog) gets a held-out split here: whole products,
and whole variant families (a product and every product ``variant_of`` it), so a red cap in the
training set never makes its black twin look "found". The draw is seeded and stratified by whether a
product has more than one image, so photo -> product queries exist on both sides when they can.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

from lenscope.client.catalog.rows import Catalog, CatalogRow
from lenscope.export.training.config import TrainConfig, TrainError


@dataclass(frozen=True)
class Split:
    train: list[CatalogRow]
    held_out: list[CatalogRow]
    source: str  # how the split was made, for the table and the metadata


def _family_root(cat: Catalog, row: CatalogRow) -> str:
    seen = {row.product_id}
    while row.variant_of is not None and row.variant_of in cat and row.variant_of not in seen:
        seen.add(row.variant_of)
        row = cat.get(row.variant_of)
    return row.product_id


def make_split(cat: Catalog, cfg: TrainConfig) -> Split:
    train, val = cat.split("train"), cat.split("val")
    if train and val:
        return Split(train, val, f"the catalog's split column: {len(train)} train / {len(val)} val products")
    pool = [r for r in cat.rows if r.split in (None, "train")]
    if cfg.holdout == 0:
        return Split(pool, [], "no held-out products (--holdout 0): nothing can prove the fine-tune")
    families: dict[str, list[CatalogRow]] = defaultdict(list)
    for row in pool:
        families[_family_root(cat, row)].append(row)
    rng = random.Random(cfg.seed)
    held: set[str] = set()
    for multi in (True, False):
        roots = sorted(k for k, rows in families.items() if any(len(r.images) > 1 for r in rows) == multi)
        rng.shuffle(roots)
        held.update(roots[:round(cfg.holdout * len(roots))])
    if not held and len(families) >= 3:
        held.add(sorted(families)[rng.randrange(len(families))])
    train_rows = [r for r in pool if _family_root(cat, r) not in held]
    held_rows = [r for r in pool if _family_root(cat, r) in held]
    if len(train_rows) < 2:
        raise TrainError(f"{cat.path}: {len(pool)} product(s) leave {len(train_rows)} to train on after holding "
                         f"{len(held_rows)} out (--holdout {cfg.holdout}); need at least 2")
    pct = math.floor(100 * len(held_rows) / max(len(pool), 1))
    return Split(train_rows, held_rows, f"held out {len(held_rows)} of {len(pool)} products ({pct}%, whole variant "
                                        f"families, seed {cfg.seed}); the catalog has no train/val split")
