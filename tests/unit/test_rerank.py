"""Fusion: breakdowns add up, weights move the order as they should, missing signals, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lenscope.client.ranking.calibration import sigmoid
from lenscope.client.ranking.fusion import (
    SIGNALS,
    FusionWeights,
    WeightsError,
    attribute_agreement,
    encode_labels,
    fuse,
    learn_weights,
    load_weights,
    popularity_prior,
    save_weights,
)


def random_signals(n: int, seed: int, missing: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {s: rng.random(n) for s in SIGNALS}
    if missing:
        for s in SIGNALS:
            out[s][rng.random(n) < missing] = np.nan
    return out


def check_breakdowns(fused, n):
    for i in range(n):
        parts = fused.breakdown(i)
        assert sum(parts.values()) == pytest.approx(fused.scores[i], abs=1e-12)


def test_breakdown_sums_to_score():
    w = FusionWeights(
        bias=-1.5, visual=2.0, image_title=0.5, text_image=1.2, text_title=0.8, attributes=0.4, popularity=0.1
    )
    sig = random_signals(200, seed=0, missing=0.2)
    fused = fuse(sig, w)
    check_breakdowns(fused, 200)
    # Absent signals are not in the breakdown, present ones are.
    i = int(np.flatnonzero(np.isnan(sig["visual"]))[0])
    assert "visual" not in fused.breakdown(i)
    j = int(np.flatnonzero(~np.isnan(sig["visual"]))[0])
    assert "visual" in fused.breakdown(j)


def test_complete_rows_are_plain_weighted_sum():
    w = FusionWeights(
        bias=0.25, visual=1.0, image_title=0.0, text_image=2.0, text_title=0.5, attributes=0.3, popularity=0.2
    )
    sig = random_signals(50, seed=1)
    fused = fuse(sig, w)
    expected = 0.25 + sum(getattr(w, s) * sig[s] for s in SIGNALS)
    np.testing.assert_allclose(fused.scores, expected, rtol=0, atol=1e-12)


def test_increasing_a_weight_changes_order_as_expected():
    # Candidate 0 looks right, candidate 1 reads right (title), candidate 2 is mediocre at both.
    sig = {
        "visual": np.array([0.9, 0.2, 0.5]),
        "text_title": np.array([0.2, 0.9, 0.5]),
    }
    base = dict(image_title=0.0, text_image=0.0, attributes=0.0, popularity=0.0)
    visual_heavy = fuse(sig, FusionWeights(visual=3.0, text_title=1.0, **base))
    title_heavy = fuse(sig, FusionWeights(visual=1.0, text_title=3.0, **base))
    assert visual_heavy.order().tolist() == [0, 2, 1]
    assert title_heavy.order().tolist() == [1, 2, 0]
    # Equal weights: 0 and 1 tie (1.1) above 2 (1.0); the tie keeps input (retrieval) order.
    equal = fuse(sig, FusionWeights(visual=1.0, text_title=1.0, **base))
    assert equal.order().tolist() == [0, 1, 2]


def test_text_plus_image_query_fuses_both():
    # Candidate 2 matches both the photo and the words; 0 only the photo, 1 only the words.
    sig = {
        "visual": np.array([0.95, 0.10, 0.80]),
        "text_image": np.array([0.10, 0.90, 0.80]),
        "text_title": np.array([0.10, 0.95, 0.75]),
    }
    fused = fuse(sig, FusionWeights())
    assert fused.order()[0] == 2
    image_only = fuse({"visual": sig["visual"]}, FusionWeights())
    text_only = fuse({"text_image": sig["text_image"], "text_title": sig["text_title"]}, FusionWeights())
    assert image_only.order()[0] == 0
    assert text_only.order()[0] == 1


def test_query_level_missing_signal_renormalises_weights():
    w = FusionWeights(
        bias=0.0, visual=1.0, image_title=1.0, text_image=1.0, text_title=1.0, attributes=0.0, popularity=0.0
    )
    # Text-only query: the two image-side signals are absent (None / left out) for every candidate.
    sig = {"visual": None, "text_image": np.array([0.6, 0.2]), "text_title": np.array([0.4, 0.2])}
    fused = fuse(sig, w)
    # Present weight mass 2 of 4 -> each present weight doubles: scores stay on the full-query scale.
    np.testing.assert_allclose(fused.scores, [2 * 0.6 + 2 * 0.4, 2 * 0.2 + 2 * 0.2])
    assert not fused.present[:, SIGNALS.index("visual")].any()
    # A candidate whose every signal equals v scores v * total weight, with or without the image side.
    full = fuse({s: np.array([0.5]) for s in ("visual", "image_title", "text_image", "text_title")}, w)
    part = fuse({s: np.array([0.5]) for s in ("text_image", "text_title")}, w)
    assert full.scores[0] == pytest.approx(part.scores[0])


def test_candidate_level_missing_is_not_penalised():
    w = FusionWeights(
        bias=0.0, visual=1.0, image_title=0.0, text_image=0.0, text_title=1.0, attributes=0.0, popularity=0.0
    )
    # Candidate 1 has no title embedding; its visual score alone (0.8) stands for both.
    sig = {"visual": np.array([0.7, 0.8]), "text_title": np.array([0.7, np.nan])}
    fused = fuse(sig, w)
    np.testing.assert_allclose(fused.scores, [1.4, 1.6])
    assert fused.order().tolist() == [1, 0]
    assert set(fused.breakdown(1)) == {"bias", "visual"}
    check_breakdowns(fused, 2)


def test_all_signals_absent_scores_bias():
    fused = fuse({"visual": np.array([np.nan, np.nan])}, FusionWeights(bias=0.3))
    np.testing.assert_array_equal(fused.scores, [0.3, 0.3])
    assert fused.breakdown(0) == {"bias": 0.3}


def test_fuse_rejects_unknown_or_mismatched_signals():
    with pytest.raises(ValueError, match="unknown signal"):
        fuse({"vision": np.array([0.1])}, FusionWeights())
    with pytest.raises(ValueError, match="differ in length"):
        fuse({"visual": np.array([0.1]), "text_title": np.array([0.1, 0.2])}, FusionWeights())


def test_attribute_agreement_hand_computed():
    query = {"color": np.array([0.7, 0.2, 0.1]), "category": np.array([0.9, 0.1])}
    cands = {
        "color": np.array([0, 2, -1, -1]),
        "category": np.array([0, 1, 1, -1]),
    }
    agree = attribute_agreement(query, cands)
    np.testing.assert_allclose(agree[:3], [(0.7 + 0.9) / 2, (0.1 + 0.1) / 2, 0.1])
    assert np.isnan(agree[3])
    assert encode_labels(["red", None, "teal", "blue"], ["red", "green", "blue"]).tolist() == [0, -1, -1, 2]


def test_popularity_prior():
    prior = popularity_prior(np.array([0, 9, 99, np.nan, -5, 1000]), catalog_max=99)
    np.testing.assert_allclose(prior, [0.0, np.log(10) / np.log(100), 1.0, 0.0, 0.0, 1.0])
    assert np.all(np.diff(popularity_prior(np.arange(100.0), 99)) > 0)


def test_learn_weights_recovers_true_weight_ordering():
    rng = np.random.default_rng(7)
    n = 20_000
    signals = ("visual", "text_image", "text_title", "popularity")
    true_w = np.array([4.0, 2.0, 1.0, 0.0])
    true_b = -3.5
    x = rng.random((n, len(signals)))
    y = (rng.random(n) < sigmoid(x @ true_w + true_b)).astype(int)
    w = learn_weights(x, y, signals, l2=1e-4)
    got = np.array([getattr(w, s) for s in signals])
    assert np.argsort(-got[:3]).tolist() == [0, 1, 2]
    np.testing.assert_allclose(got[:3], true_w[:3], rtol=0.15)
    assert got[3] < 0.3
    assert w.bias == pytest.approx(true_b, abs=0.4)
    # Signals not learned are switched off.
    assert w.image_title == 0.0 and w.attributes == 0.0
    # With all weighted signals present, the fused score is the fitted logit.
    fused = fuse({s: x[:5, j] for j, s in enumerate(signals)}, w)
    np.testing.assert_allclose(fused.scores, x[:5] @ got + w.bias, atol=1e-12)


def test_learn_weights_pins_harmful_signal_at_zero():
    rng = np.random.default_rng(8)
    n = 10_000
    x = rng.random((n, 2))
    # Relevance falls with the second signal: an unconstrained fit would give it a negative weight.
    y = (rng.random(n) < sigmoid(3.0 * x[:, 0] - 2.0 * x[:, 1])).astype(int)
    w = learn_weights(x, y, ("visual", "popularity"))
    assert w.popularity == 0.0
    assert w.visual > 2.0


def test_learn_weights_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        learn_weights(np.array([[np.nan], [0.1]]), np.array([1, 0]), ("visual",))
    with pytest.raises(ValueError, match="both relevant"):
        learn_weights(np.array([[0.2], [0.1]]), np.array([1, 1]), ("visual",))


def test_weights_file_round_trip_and_errors_name_the_field(tmp_path):
    w = FusionWeights(bias=-0.5, visual=1.25, popularity=0.0)
    path = save_weights(w, tmp_path / "weights.json")
    assert load_weights(path) == w

    bad = json.loads(w.model_dump_json())
    bad["text_title"] = -1.0
    path.write_text(json.dumps(bad))
    with pytest.raises(WeightsError, match=r"text_title: Input should be greater than or equal to 0"):
        load_weights(path)

    bad = json.loads(w.model_dump_json())
    bad["visaul"] = 1.0
    path.write_text(json.dumps(bad))
    with pytest.raises(WeightsError, match="visaul"):
        load_weights(path)
