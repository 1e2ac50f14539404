"""The ``text_facets`` signal: which of the catalog's own facet values a query's words name, and
whether each candidate has them.

Why a lexical signal next to the CLIP cosines: an attribute phrase ("red dress", "striped mug")
names values the catalog states exactly (its facets, docs/catalog.md); the embeddings only
approximate them (a tiny model confuses near colours and similar categories, and a title may say
"cherry" where the facet says "red"). The catalog's own values are evidence the stack already has.
The signal is one input of the fusion like any other: the index build's self-check fits its weight
on pseudo-queries and publishes the fused ranking only where it beats the best raw signal
(``ranking.policy``), so a catalog whose facets do not match how it is searched keeps its raw
ranking.

    named_values("red floral dress", vocab) -> {"color": {red}, "category": {dress}}
    text_facet_signal(named, codes) -> per candidate: the fraction of the named facets whose value
                                       it has (0 where it has no value: absent is not a match)

Nothing is named (no query word is a facet value): the signal is absent for the query (None), so
``fuse`` renormalises over the other signals instead of scoring every candidate 0. Matching is on
lower-cased word tokens, a value matching where its tokens occur consecutively in the query's
("t-shirt" in "striped t-shirt"), a trailing plural "s" ignored ("sneakers" names "sneaker"). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> tuple[str, ...]:
    """Lower-cased word tokens, a trailing plural ``s`` dropped from words of 4+ letters (not ``ss``)."""
    out = []
    for t in _TOKEN.findall(text.lower()):
        if len(t) >= 4 and t.endswith("s") and not t.endswith("ss"):
            t = t[:-1]
        out.append(t)
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def _value_tokens(value: str) -> tuple[str, ...]:
    return tokens(value)  # a catalog's values recur in every query: tokenised once


def _contains(seq: Sequence[str], sub: Sequence[str]) -> bool:
    n = len(sub)
    return n > 0 and any(tuple(seq[i:i + n]) == tuple(sub) for i in range(len(seq) - n + 1))


def named_values(text: str, vocab: Mapping[str, Sequence[str]]) -> dict[str, frozenset[int]]:
    """facet -> indices (into ``vocab[facet]``) of the values the text names; facets not named are left out."""
    words = tokens(text)
    out: dict[str, frozenset[int]] = {}
    for facet, values in vocab.items():
        hit = frozenset(i for i, v in enumerate(values) if _contains(words, _value_tokens(v)))
        if hit:
            out[facet] = hit
    return out


def text_facet_signal(named: Mapping[str, frozenset[int]], codes: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Per candidate, the fraction of named facets it has a named value of (``codes[facet]``: the
    candidates' value indices, -1 = no value); None when nothing is named."""
    facets = [f for f in named if f in codes]
    if not facets:
        return None
    total = sum(np.isin(np.asarray(codes[f]), sorted(named[f])).astype(np.float64) for f in facets)
    return np.asarray(total, dtype=np.float64) / len(facets)


def text_facets_for(text: str | None, vocab: Mapping[str, Sequence[str]],
                    codes: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """``text_facet_signal`` of a query text (None without text or when it names no value)."""
    if not text or not text.strip():
        return None
    return text_facet_signal(named_values(text, vocab), codes)
