"""The ``text_facets`` signal (client/ranking/text_facets.py): which catalog facet values a query's
words name, and each candidate's share of them."""

from __future__ import annotations

import numpy as np

from lenscope.client.ranking.facets import AttributeTable
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, fuse
from lenscope.client.ranking.text_facets import named_values, text_facet_signal, text_facets_for, tokens

TABLE = AttributeTable.from_columns({
    "category": ["dress", "dress", "t-shirt", "sneaker", None],
    "color": ["red", "blue", "red", "red", "red"],
    "pattern": ["striped", None, "solid", "solid", "floral"],
})


def test_tokens_lower_case_split_and_plural() -> None:
    assert tokens("Red T-Shirts, 2 pcs!") == ("red", "t", "shirt", "2", "pcs")
    assert tokens("Dress glass") == ("dress", "glass")  # "ss" is not a plural
    assert tokens("bus") == ("bus",)  # short words keep their s


def test_named_values_match_whole_words_and_multiword_values() -> None:
    vocab = TABLE.vocab
    named = named_values("Red striped T-shirts", vocab)
    assert {f: {vocab[f][i] for i in v} for f, v in named.items()} == {
        "category": {"t-shirt"}, "color": {"red"}, "pattern": {"striped"}}
    assert named_values("redder shirt", vocab) == {}  # no partial words, "shirt" alone is not "t-shirt"
    assert {vocab["category"][i] for i in named_values("sneakers", vocab)["category"]} == {"sneaker"}


def test_signal_is_the_share_of_named_facets_a_candidate_has() -> None:
    s = text_facets_for("red dress", TABLE.vocab, TABLE.codes)
    np.testing.assert_allclose(s, [1.0, 0.5, 0.5, 0.5, 0.5])  # the product without a category: not a dress
    # two values of one facet: either counts
    both = text_facet_signal({"color": frozenset({TABLE.vocab["color"].index("blue"),
                                                   TABLE.vocab["color"].index("red")})}, TABLE.codes)
    np.testing.assert_allclose(both, [1, 1, 1, 1, 1])


def test_nothing_named_is_absent_not_zero() -> None:
    assert text_facets_for("crimson frock", TABLE.vocab, TABLE.codes) is None
    assert text_facets_for("", TABLE.vocab, TABLE.codes) is None
    assert text_facets_for(None, TABLE.vocab, TABLE.codes) is None
    assert text_facet_signal({"size": frozenset({0})}, TABLE.codes) is None  # a facet the candidates lack


def test_weights_without_the_signal_rank_as_before() -> None:
    # text_facets is last and 0 by default: an older weights file fuses exactly as it did
    assert SIGNALS[-1] == "text_facets" and FusionWeights().text_facets == 0.0
    rng = np.random.default_rng(0)
    sig = {"text_image": rng.random(5), "text_title": rng.random(5), "popularity": rng.random(5)}
    w = FusionWeights()
    with_facets = fuse({**sig, "text_facets": text_facets_for("red dress", TABLE.vocab, TABLE.codes)}, w)
    np.testing.assert_allclose(with_facets.scores, fuse(sig, w).scores)
    assert with_facets.breakdown(0)["text_facets"] == 0.0  # reported, with contribution 0
