"""Which label sets the attribute heads learn, and each product's target in them.

A spec written for one catalog cannot know another shop's labels (``Bags``, ``Hoodies & Sweatshirts``),
so the label sets come from one of two places, chosen by ``TrainConfig.labels``:

- ``spec``: the spec's own sets; a catalog label outside them stops the run with a message naming
  the catalog file, line, field and value (the strict, reproducible mode of the shipped recipe);
- ``catalog``: the catalog's own distinct values of each attribute the spec names (or, for a spec
  naming none the catalog has, of each catalog attribute that looks like a class: 2..64 values,
  each shared by more than one product on average);
- ``auto`` (the default): the spec's sets when the catalog's labels all fit them, else the
  catalog's, saying so.

Labels match case- and whitespace-insensitively (``" Hoodies  &  Sweatshirts"`` is ``hoodies &
sweatshirts``); a catalog set keeps the spelling used most often. A head whose label set changed
starts fresh: the start checkpoint's head of another shape cannot load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lenscope.client.catalog.rows import Catalog, CatalogRow
from lenscope.client.core.modelspec import AttributeSpec, ModelSpec
from lenscope.client.eval.labels import label_key
from lenscope.export.training.config import TrainConfig, TrainError

MAX_CATALOG_LABELS = 64


@dataclass(frozen=True)
class LabelChoice:
    """The attribute sets a run trains (maybe not the spec's), where they came from, and why."""

    attributes: tuple[AttributeSpec, ...]
    source: str  # "spec" | "catalog" | "none"
    notes: tuple[str, ...] = ()

    def spec_for(self, spec: ModelSpec) -> ModelSpec:
        return spec if self.source == "spec" else spec.model_copy(update={"attributes": self.attributes})


def _where(cat: Catalog, row: CatalogRow, k: int = 0) -> str:
    lines = cat.lines.get(row.product_id, ())
    line = lines[k] if k < len(lines) else None
    return f"{cat.path}" + (f":{line}" if line else "")


def _labelled(rows: Sequence[CatalogRow], name: str) -> list[tuple[CatalogRow, int, str]]:
    """(product, image number, value) of one attribute: the product's value (on its main image)
    and every image's own value (``ImageRef.attributes``) that the heads also learn."""
    out = []
    for row in rows:
        if (value := row.attributes.get(name)) is not None:
            out.append((row, 0, value))
        out.extend((row, k, v) for k, im in enumerate(row.images)
                   if (v := im.attributes.get(name)) is not None and (k or v != row.attributes.get(name)))
    return out


def _misfits(spec: ModelSpec, cat: Catalog, rows: Sequence[CatalogRow]) -> list[str]:
    """Catalog values the spec's label sets do not hold (case-insensitively), as file:line: field=value."""
    out = []
    for attr in spec.attributes:
        keys = {label_key(lab) for lab in attr.labels}
        for row, k, value in _labelled(rows, attr.name):
            if label_key(value) not in keys:
                image = f" image {row.images[k].path!r}:" if row.images[k].attributes.get(attr.name) == value else ""
                out.append(f"{_where(cat, row, k)}: product {row.product_id!r}:{image} {attr.name}={value!r}")
    return out


def catalog_labels(cat: Catalog, rows: Sequence[CatalogRow], name: str) -> tuple[str, ...]:
    """Distinct labels of one attribute (compared by ``label_key``; products' and images' own values),
    each in its most used spelling."""
    spellings: dict[str, Counter[str]] = {}
    for _, _, value in _labelled(rows, name):
        if value.strip():
            spellings.setdefault(label_key(value), Counter())[value.strip()] += 1
    return tuple(sorted(c.most_common(1)[0][0] for c in spellings.values()))


def _classlike(cat: Catalog, rows: Sequence[CatalogRow]) -> list[str]:
    out = []
    for name in cat.attribute_names():
        labels = catalog_labels(cat, rows, name)
        n_with = sum(name in r.attributes for r in rows)
        if 2 <= len(labels) <= MAX_CATALOG_LABELS and n_with > len(labels):
            out.append(name)
    return out


def choose_labels(spec: ModelSpec, cat: Catalog, rows: Sequence[CatalogRow], cfg: TrainConfig) -> LabelChoice:
    """The label sets of this run (see the module docstring); raises TrainError in ``spec`` mode on a misfit."""
    if cfg.heads == "none":
        return LabelChoice(spec.attributes, "spec")
    names = set(cat.attribute_names())
    missing = [a.name for a in spec.attributes if a.name not in names]
    misfits = _misfits(spec, cat, rows) if spec.attributes else []
    if cfg.labels == "spec":
        if not spec.attributes:
            raise TrainError(f"heads {cfg.heads!r} with --labels-from-spec, but spec {spec.name!r} declares no attributes")
        if missing:
            raise TrainError(f"{cat.path}: spec attribute(s) {missing} are not attributes of any product (the "
                             f"catalog's attributes: {', '.join(sorted(names)) or 'none'}); use --labels-from-catalog")
        if misfits:
            raise TrainError(f"{len(misfits)} label(s) not in spec {spec.name!r}'s label sets (compared ignoring case "
                             f"and spaces), e.g.\n  " + "\n  ".join(misfits[:8]) +
                             "\nuse --labels-from-catalog to learn the catalog's own labels, or fix the spec")
        return LabelChoice(spec.attributes, "spec")
    if cfg.labels == "auto" and spec.attributes and not missing and not misfits:
        return LabelChoice(spec.attributes, "spec")
    wanted = [a.name for a in spec.attributes if a.name in names] or _classlike(cat, rows)
    attrs = []
    for name in wanted:
        labels = catalog_labels(cat, rows, name)
        if len(labels) >= 2:
            attrs.append(AttributeSpec(name=name, labels=labels))
    notes = []
    if cfg.labels == "auto":
        why = (f"{len(misfits)} catalog label(s) are not in the spec's sets (e.g. {misfits[0]})" if misfits
               else f"the catalog has no {missing} attribute" if missing else "the spec names no attributes")
        notes.append(f"label sets from the catalog: {why}")
    dropped = [a.name for a in spec.attributes if a.name not in {x.name for x in attrs}]
    if dropped:
        notes.append(f"spec attribute(s) {dropped} have fewer than 2 labels in the catalog: no head for them")
    for a in attrs:
        notes.append(f"  {a.name}: {len(a.labels)} labels ({', '.join(a.labels[:8])}{', ...' if len(a.labels) > 8 else ''})")
    return LabelChoice(tuple(attrs), "catalog" if attrs else "none", tuple(notes))


def attribute_targets(attributes: Sequence[AttributeSpec], rows: Sequence[CatalogRow],
                      unknown: Callable[[CatalogRow, str, str], None] | None = None) -> torch.Tensor:
    """[N, n_attributes] label indices of each product's main image (-100 = absent or not in the set);
    ``unknown`` hears of the latter."""
    return image_targets(attributes, [(r, 0) for r in rows], unknown)


def image_targets(attributes: Sequence[AttributeSpec], items: Sequence[tuple[CatalogRow, int]],
                  unknown: Callable[[CatalogRow, str, str], None] | None = None) -> torch.Tensor:
    """[N, n_attributes] label indices of (product, image number) pairs: what each image shows, its
    own labels where the catalog gives them, else its product's (-100 = absent or not in the set)."""
    targets = torch.full((len(items), len(attributes)), -100, dtype=torch.long)
    for j, attr in enumerate(attributes):
        index = {label_key(lab): k for k, lab in enumerate(attr.labels)}
        for i, (row, n) in enumerate(items):
            value = row.image_labels(n).get(attr.name)
            if value is None:
                continue
            k = index.get(label_key(value))
            if k is None:
                if unknown is not None:
                    unknown(row, attr.name, value)
            else:
                targets[i, j] = k
    return targets
