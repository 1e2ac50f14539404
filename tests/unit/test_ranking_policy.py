"""The do-no-harm rule's pure parts: the raw-cosine rule, the per-query-type decision, fit binding."""

from __future__ import annotations

import numpy as np
import pytest

from lenscope.client.ranking.calibration import CalibrationSet, fit_pair
from lenscope.client.ranking.fusion import SIGNALS, fuse
from lenscope.client.ranking.policy import (
    FUSED,
    RULE_DEFAULT,
    RULE_FUSED,
    RULE_NO_FIT,
    RULE_RAW_LOST,
    RULE_RAW_POOLED,
    FitBinding,
    RankingPolicy,
    Score,
    binding_mismatch,
    decide,
    query_type_of,
    single_signal_weights,
)
from lenscope.client.ranking.signals import prepare_signals


def _cal(pair: str) -> CalibrationSet:
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0.6, 0.1, 50), rng.normal(0.3, 0.1, 50)]
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    return CalibrationSet(pairs={pair: fit_pair(pair, s, y)})


def test_uncalibrated_signal_is_its_raw_cosine_never_dropped() -> None:
    raw = {"visual": np.array([0.9, 0.2, np.nan]), "text_image": np.array([0.3, 0.25, 0.1]),
           "popularity": np.array([0.5, 0.0, 1.0])}
    p = prepare_signals(raw, _cal("image_image"))
    assert set(p.values) == set(raw)
    assert p.calibrated == ("visual",) and p.raw == ("text_image",)
    assert np.array_equal(p.values["text_image"], raw["text_image"])
    assert np.isnan(p.values["visual"][2]) and 0 < p.values["visual"][0] < 1 and p.values["visual"][0] != 0.9
    none = prepare_signals(raw, None)
    assert none.calibrated == () and set(none.raw) == {"visual", "text_image"}


def test_single_signal_weights_rank_by_that_signal_and_report_the_others() -> None:
    signals = {"visual": np.array([0.1, 0.9, 0.5]), "text_image": np.array([0.8, 0.1, 0.3])}
    fused = fuse(signals, single_signal_weights("text_image"))
    assert fused.order().tolist() == [0, 2, 1]
    assert set(fused.breakdown(0)) == {"bias", "visual", "text_image"}  # nothing dropped from the breakdown
    assert fused.breakdown(0)["visual"] == 0.0
    with pytest.raises(ValueError, match="unknown signal"):
        single_signal_weights("colour")


def _s(n: float, r: float) -> Score:
    return Score(ndcg10=n, r10=r)


def test_decide_publishes_fused_only_when_it_beats_the_best_raw_signal() -> None:
    win = decide("text", {FUSED: _s(0.7, 0.9), "text_image": _s(0.6, 0.9), "text_title": _s(0.5, 0.8)}, 30)
    assert win.ranked_by == FUSED and "beats" in win.reason
    lose = decide("text", {FUSED: _s(0.55, 0.9), "text_image": _s(0.6, 0.9), "text_title": _s(0.5, 0.8)}, 30)
    assert lose.ranked_by == "text_image" and "does not beat" in lose.reason
    tie_r10 = decide("image", {FUSED: _s(0.6, 0.95), "visual": _s(0.6, 0.9)}, 30)
    assert tie_r10.ranked_by == FUSED
    loses_r10 = decide("image", {FUSED: _s(0.9, 0.85), "visual": _s(0.6, 0.9)}, 30)
    assert loses_r10.ranked_by == "visual" and "loses more than one" in loses_r10.reason
    one_query = decide("image", {FUSED: _s(0.9, 0.9 - 1 / 30), "visual": _s(0.6, 0.9)}, 30)
    assert one_query.ranked_by == FUSED
    rounded = decide("image", {FUSED: _s(0.92, round(1 - 1 / 91, 4)), "visual": _s(0.91, 1.0)}, 91)
    assert rounded.ranked_by == FUSED  # exactly one query lost, as the stored (rounded) numbers say
    tie = decide("image", {FUSED: _s(0.6, 0.9), "visual": _s(0.6, 0.9)}, 30)
    assert tie.ranked_by == "visual"
    few = decide("image", {FUSED: _s(0.9, 1.0), "visual": _s(0.6, 0.9), "image_title": _s(0.7, 0.9)}, 5)
    assert few.ranked_by == "image_title" and "only 5" in few.reason
    nofit = decide("image+text", {"visual": _s(0.2, 0.3), "text_image": _s(0.4, 0.5)}, 30)
    assert nofit.ranked_by == "text_image"
    empty = decide("image+text", {}, 0)
    assert empty.ranked_by == "visual" and "no pseudo-query evidence" in empty.reason
    assert empty.rule == RULE_DEFAULT and nofit.rule == RULE_NO_FIT and win.rule == RULE_FUSED


def test_raw_signal_is_chosen_on_all_pseudo_queries_fused_only_on_held_out_ones() -> None:
    held = {FUSED: _s(0.9, 1.0), "visual": _s(0.8, 1.0), "text_image": _s(0.5, 0.5)}
    pooled = {"visual": _s(0.5, 0.6), "text_image": _s(0.55, 0.8), "image_title": _s(0.1, 0.2)}
    # too few held-out queries to publish fused: the raw signal all 40 pseudo-queries favour ranks
    few = decide("image+text", held, 2, pooled=pooled, n_pooled=40)
    assert few.ranked_by == "text_image" and few.rule == RULE_RAW_POOLED
    assert "only 2 held-out" in few.reason and "all 40 pseudo-queries" in few.reason
    assert few.pooled == pooled and few.n_pooled == 40
    # enough held-out queries: fused is compared with the strongest raw signal held out (visual)
    assert decide("image+text", held, 30, pooled=pooled, n_pooled=40).ranked_by == FUSED
    close = {**held, FUSED: _s(0.8, 1.0)}
    lost = decide("image+text", close, 30, pooled=pooled, n_pooled=40)
    assert lost.ranked_by == "text_image" and lost.rule == RULE_RAW_LOST and "visual" in lost.reason
    # the pooled numbers only hold raw signals: a "fused" entry there is ignored
    assert FUSED not in decide("image", {}, 0, pooled={**pooled, FUSED: _s(1, 1)}, n_pooled=5).pooled


def test_policy_weights_per_query_type() -> None:
    from lenscope.client.ranking.fusion import FusionWeights

    pol = RankingPolicy(source="self-check", decisions={
        "text": decide("text", {FUSED: _s(0.1, 0.1), "text_image": _s(0.6, 0.9)}, 30),
        "image": decide("image", {FUSED: _s(0.9, 0.9), "visual": _s(0.6, 0.9)}, 30)})
    w = FusionWeights()
    assert pol.weights_for("image", w) == w
    assert pol.weights_for("text", w).vector().tolist() == [1.0 if s == "text_image" else 0.0 for s in SIGNALS]
    assert pol.ranked_by("image+text") == FUSED  # no decision recorded: the fused weights
    assert RankingPolicy.model_validate_json(pol.model_dump_json()) == pol
    assert query_type_of(True, True) == "image+text" and query_type_of(False, True) == "text"


def test_binding_applies_a_fit_only_to_its_model_and_catalog() -> None:
    b = FitBinding(model_hash="m1", catalog_fingerprint="c1")
    assert binding_mismatch(b, "m1", "c1") is None
    assert "model m1" in binding_mismatch(b, "m2", "c1")
    assert "catalog c1" in binding_mismatch(b, "m1", "c2")
    assert "applied nowhere else" in binding_mismatch(None, "m1", "c1")


def test_held_out_scores_compare_fused_with_each_raw_signal() -> None:
    from lenscope.client.index.self_check import held_out_scores
    from lenscope.client.ranking.fusion import FusionWeights
    from lenscope.client.ranking.pools import CandidatePool

    rng = np.random.default_rng(0)
    pools = []
    for q in range(12):
        n = 30
        grades = np.zeros(n, dtype=np.int64)
        grades[q % n] = 1
        good = rng.uniform(0, 0.5, n)
        good[q % n] = 0.9  # text_image finds the product; text_title is noise
        pools.append(CandidatePool(f"held_out:title:{q}", "text", tuple(f"p{i}" for i in range(n)),
                                   {"text_image": good, "text_title": rng.uniform(0, 1, n)}, grades,
                                   {f"p{q % n}": 1}))
    noisy = FusionWeights(bias=0.0, visual=0, image_title=0, text_image=0.01, text_title=1.0, attributes=0, popularity=0)
    scores = held_out_scores(pools, None, noisy)["text"]
    assert scores["text_image"].ndcg10 == 1.0 and scores["text_image"].r10 == 1.0
    assert scores[FUSED].ndcg10 < 0.9
    assert decide("text", scores, len(pools)).ranked_by == "text_image"
    assert FUSED not in held_out_scores(pools, None, None)["text"]


def test_round_robin_keeps_the_top_of_every_list() -> None:
    from lenscope.client.search.engine import round_robin

    a, b = np.array([1, 2, 3, 4, 5]), np.array([9, 2, 8, 7])
    assert round_robin([a, b], 4).tolist() == [1, 9, 2, 3]
    assert round_robin([b, a], 100).tolist() == [9, 1, 2, 8, 3, 7, 4, 5]
    assert round_robin([], 3).size == 0


def test_a_fit_without_held_out_queries_of_a_type_is_not_called_no_fit() -> None:
    pooled = {"visual": _s(0.6, 0.9), "image_title": _s(0.3, 0.8)}
    d = decide("image", {}, 0, pooled=pooled, n_pooled=8, fitted=True)
    assert d.ranked_by == "visual" and d.rule == RULE_RAW_POOLED and "only 0 held-out" in d.reason
    assert decide("image", {}, 0, pooled=pooled, n_pooled=8, fitted=False).rule == RULE_NO_FIT


def test_a_type_fused_with_its_own_weights_uses_them_and_they_survive_json() -> None:
    from lenscope.client.ranking.fusion import FusionWeights

    own = FusionWeights(bias=0.0, visual=0, image_title=0, text_image=0.2, text_title=1.0, attributes=0,
                        popularity=0, text_facets=0.7)
    fused = decide("text", {FUSED: _s(0.9, 0.9), "text_title": _s(0.6, 0.9)}, 30).model_copy(update={"weights": own})
    lost = decide("image", {FUSED: _s(0.1, 0.1), "visual": _s(0.6, 0.9)}, 30).model_copy(update={"weights": own})
    pol = RankingPolicy(source="self-check", decisions={"text": fused, "image": lost})
    shared = FusionWeights()
    assert pol.weights_for("text", shared) == own
    assert pol.weights_for("image", shared) == single_signal_weights("visual")  # raw wins: own weights unused
    assert pol.weights_for("image+text", shared) == shared  # no decision: the index's one file
    back = RankingPolicy.model_validate_json(pol.model_dump_json())
    assert back == pol and back.weights_for("text", shared) == own


def test_self_check_pools_carry_the_engines_facet_and_head_signals() -> None:
    from lenscope.client.core import contract
    from lenscope.client.index.pseudo_queries import ProductView, PseudoQuery
    from lenscope.client.index.self_check import CatalogFacets, CatalogVectors, build_pools

    views = [ProductView("a", "A", {"color": "red", "category": "dress"}),
             ProductView("b", "B", {"color": "blue", "category": "dress"}),
             ProductView("c", "C", {"color": "red"})]
    heads = {"color": ("blue", "green", "red")}
    facets = CatalogFacets.of(views, heads)
    assert facets.table.vocab == {"category": ("dress",), "color": ("blue", "red")}
    assert facets.label_codes["color"].tolist() == [2, 0, 2] and "category" not in facets.label_codes
    assert CatalogFacets.of(views, None).label_codes == {}  # untrained heads: no attributes signal
    rng = np.random.default_rng(0)
    vec = CatalogVectors(image=rng.random((3, 4)), title=rng.random((3, 4)), popularity=np.zeros(3))
    queries = [PseudoQuery("fit:phrase:red dress", "phrase", "fit", "red dress", None, {"a": 1}),
               PseudoQuery("fit:phrase:silk", "phrase", "fit", "silk", None, {"a": 1}),
               PseudoQuery("fit:photo:a:0", "photo", "fit", None, "x.jpg", {"a": 2})]
    probs = {"x.jpg": {contract.attribute_output("color"): np.array([0.1, 0.1, 0.8])}}
    pools = build_pools(queries, ["a", "b", "c"], {"a": "fit", "b": "fit", "c": "fit"}, vec,
                        {"red dress": rng.random(4), "silk": rng.random(4)}, {"x.jpg": rng.random(4)}, facets, probs)
    np.testing.assert_allclose(pools[0].signals["text_facets"], [1.0, 0.5, 0.5])  # c has no category
    assert "text_facets" not in pools[1].signals  # names no facet value: absent
    np.testing.assert_allclose(pools[2].signals["attributes"], [0.8, 0.1, 0.8])
    assert "attributes" not in pools[0].signals and "text_facets" not in pools[2].signals
