"""Fitting calibration + fusion weights from labelled candidate pools (client/ranking/: pools, fusion_pointwise,
fusion_search, fusion_fit, modality_gap, labelled_rows), and the harness's pure pieces (signal recovery from a
breakdown)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.eval.queries import PROBE_WEIGHTS, signal_values, variants_for
from lenscope.client.eval.tables import headline, metric_table
from lenscope.client.ranking.fusion_fit import fit_fusion, mean_ndcg, rank_pool, weights_without
from lenscope.client.ranking.fusion_pointwise import fuse_objective, impute_like_fuse, learn_fusion
from lenscope.client.ranking.fusion_search import RankingData, learn_lambda, refine_coordinate
from lenscope.client.ranking.labelled_rows import read_labelled_rows
from lenscope.client.ranking.modality_gap import gap_samples, gap_table
from lenscope.client.ranking.pools import (
    CandidatePool,
    FitError,
    calibrated_signals,
    feature_matrix,
    fit_pool_calibration,
    pair_data,
)
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, fuse, learn_weights

TYPE_SIGNALS = {"image": ("visual", "image_title", "attributes", "popularity"),
                "text": ("text_image", "text_title", "popularity"),
                "image+text": ("visual", "image_title", "text_image", "text_title", "attributes", "popularity")}


def synthetic_pools(n_queries: int = 60, n_cand: int = 30, seed: int = 0) -> list[CandidatePool]:
    """Pools where relevance (grade 3 exact, 1 same category) is driven by visual + text_title
    strongly, text_image weakly, image_title and popularity not at all. Raw cosines are on
    different scales per pair (the modality gap): image_image high, text pairs low."""
    rng = np.random.default_rng(seed)
    pools = []
    for qi in range(n_queries):
        qtype = ("image", "text", "image+text")[qi % 3]
        grades = np.zeros(n_cand, dtype=np.int64)
        grades[0] = 3
        grades[1:6] = 1
        rel = grades > 0
        exact = grades == 3
        signals = {}
        if "visual" in TYPE_SIGNALS[qtype]:
            signals["visual"] = 0.55 + 0.25 * exact + 0.05 * rel + 0.06 * rng.standard_normal(n_cand)
            signals["image_title"] = 0.2 + 0.05 * rng.standard_normal(n_cand)
            signals["attributes"] = np.clip(0.3 + 0.4 * rel + 0.15 * rng.standard_normal(n_cand), 0, 1)
        if "text_image" in TYPE_SIGNALS[qtype]:
            signals["text_image"] = 0.15 + 0.04 * exact + 0.05 * rng.standard_normal(n_cand)
            signals["text_title"] = 0.25 + 0.15 * exact + 0.04 * rel + 0.04 * rng.standard_normal(n_cand)
        signals["popularity"] = rng.random(n_cand)
        order = rng.permutation(n_cand)
        ids = tuple(f"q{qi}-p{j}" for j in range(n_cand))
        pools.append(CandidatePool(
            query_id=f"q{qi}", query_type=qtype, product_ids=tuple(ids[j] for j in order),
            signals={k: v[order] for k, v in signals.items()}, grades=grades[order],
            relevance={ids[j]: int(grades[j]) for j in range(n_cand) if grades[j] > 0},
        ))
    return pools


def test_pool_validation_and_labels() -> None:
    with pytest.raises(ValueError):
        CandidatePool("q", "image", ("a", "b"), {"visual": np.zeros(3)}, np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        CandidatePool("q", "image", ("a",), {"nope": np.zeros(1)}, np.zeros(1, np.int64))
    p = CandidatePool("q", "image", ("a", "b", "c"), {"visual": np.zeros(3)}, np.array([3, 1, 0]),
                      relevance={"a": 3, "b": 1, "z": 3})
    assert p.labels("max").tolist() == [1, 0, 0]
    assert p.labels(1).tolist() == [1, 1, 0]


def test_pair_data_uses_each_modalitys_own_queries() -> None:
    pools = synthetic_pools()
    data, notes = pair_data(pools)
    assert set(data) == {"image_image", "image_title", "text_image", "text_title"}
    n_image = sum(p.query_type == "image" for p in pools)
    n_text = sum(p.query_type == "text" for p in pools)
    assert data["image_image"][0].size == n_image * 30  # photo-only queries, not photo+text
    assert data["text_title"][0].size == n_text * 30
    assert data["image_image"][1].sum() == n_image  # one exact product per query at "max"
    assert "image queries" in notes["image_image"] and "text queries" in notes["text_image"]
    # without pure queries, a pair falls back to photo+text queries
    mixed = [p for p in pools if p.query_type == "image+text"]
    data2, notes2 = pair_data(mixed)
    assert data2["image_image"][0].size == len(mixed) * 30 and "image+text" in notes2["image_image"]


def test_fit_pool_calibration_is_monotone_and_closes_the_gap() -> None:
    pools = synthetic_pools()
    cal, notes = fit_pool_calibration(pools, model_hash="abc")
    assert isinstance(cal, CalibrationSet) and cal.model_hash == "abc"
    assert set(cal.pairs) == {"image_image", "image_title", "text_image", "text_title"}
    xs = np.linspace(-0.2, 1.0, 50)
    for c in cal.pairs.values():
        assert np.all(np.diff(c.apply(xs)) >= 0)
    gaps = gap_table(cal)
    # raw: matched text->image cosines sit far below image->image ones (the modality gap), and so do
    # the unmatched ones: a raw 0.3 means "irrelevant" for one pair and "relevant" for another ...
    assert gaps["text_image"]["gap_to_image_image_raw"] > 0.4
    raw_unmatched = [g["raw_unmatched"] for g in gaps.values()]
    assert max(raw_unmatched) - min(raw_unmatched) > 0.3
    # ... calibrated, every pair maps its irrelevant candidates to about the same low probability
    cal_unmatched = [g["calibrated_at_unmatched_mean"] for g in gaps.values()]
    assert max(cal_unmatched) - min(cal_unmatched) < 0.1
    # a pair with no relevant candidate is skipped with a note; all skipped is an error
    flat = [CandidatePool(p.query_id, p.query_type, p.product_ids, p.signals, np.zeros(len(p), np.int64),
                          {"elsewhere": 3}) for p in pools]
    with pytest.raises(FitError):
        fit_pool_calibration(flat)


def test_calibrated_signals_mirror_the_engine() -> None:
    pools = synthetic_pools()
    cal, _ = fit_pool_calibration(pools)
    only_image = CalibrationSet(pairs={"image_image": cal.pairs["image_image"]})
    p = next(q for q in pools if q.query_type == "image+text")
    sig = calibrated_signals(p, only_image)
    # the raw-cosine rule: an uncalibrated pair reaches fusion as its raw cosine, never dropped
    assert np.array_equal(sig["text_image"], p.signals["text_image"])
    assert np.allclose(sig["visual"], cal.pairs["image_image"].apply(p.signals["visual"]))
    assert np.array_equal(sig["attributes"], p.signals["attributes"])
    raw = calibrated_signals(p, None)
    assert np.array_equal(raw["text_image"], p.signals["text_image"])


def test_impute_like_fuse_reproduces_fuse_scores() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((200, len(SIGNALS)))
    x[rng.random(x.shape) < 0.35] = np.nan
    w = FusionWeights(bias=-1.5, visual=2.0, image_title=0.3, text_image=1.2, text_title=0.8, attributes=0.5,
                      popularity=0.1)
    fused = fuse({s: x[:, j] for j, s in enumerate(SIGNALS)}, w)
    filled = impute_like_fuse(x, w)
    ok = np.isfinite(x).any(axis=1)
    assert np.allclose((filled @ w.vector() + w.bias)[ok], fused.scores[ok])


def test_learn_fusion_on_complete_rows_is_learn_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((400, len(SIGNALS)))
    y = (x[:, 0] * 3 + x[:, 2] - 2 + 0.3 * rng.standard_normal(400) > 0).astype(int)
    fit = learn_fusion(x, y)
    ref = learn_weights(x, y)
    assert np.allclose(fit.weights.vector(), ref.vector(), atol=1e-6)
    assert fit.weights.bias == pytest.approx(ref.bias, abs=1e-6)


def test_learn_fusion_recovers_weights_through_missing_signals() -> None:
    """Labels drawn from sigmoid(fuse score) of known weights on rows with missing signals: the
    fixed point finds weights whose fuse objective is as good as the truth's and close to them."""
    rng = np.random.default_rng(1)
    n = 6000
    x = rng.random((n, len(SIGNALS)))
    kind = rng.integers(0, 3, n)  # 0 photo-only, 1 text-only, 2 both
    x[kind == 0, 2:4] = np.nan
    x[kind == 1, 0:2] = np.nan
    x[kind == 1, 4] = np.nan
    truth = FusionWeights(bias=-4.0, visual=5.0, image_title=0.0, text_image=1.0, text_title=3.0, attributes=1.5,
                          popularity=0.0)
    score = fuse({s: x[:, j] for j, s in enumerate(SIGNALS)}, truth).scores
    y = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(int)
    fit = learn_fusion(x, y, l2=1e-4)
    assert fit.objective <= fuse_objective(x, y, truth, 1e-4) + 1e-3
    assert np.all(fit.weights.vector() >= 0)
    for s in ("visual", "text_title", "attributes"):
        assert getattr(fit.weights, s) == pytest.approx(getattr(truth, s), rel=0.35), s
    assert fit.weights.popularity < 0.5
    # fitting on complete rows only would have to ignore two thirds of the data; the imputed fit
    # is at least as good on the fuse objective as its complete-row start
    complete = np.isfinite(x).all(axis=1)
    start = learn_weights(x[complete], y[complete])
    assert fit.objective <= fuse_objective(x, y, start, 1e-4) + 1e-9


def test_learn_fusion_signal_subset_and_errors() -> None:
    pools = synthetic_pools()
    x, y = feature_matrix(pools, None)
    no_heads = learn_fusion(x, y, signals=[s for s in SIGNALS if s != "attributes"])
    assert no_heads.weights.attributes == 0.0
    with pytest.raises(FitError):
        learn_fusion(x, np.zeros(len(y), int))
    with pytest.raises(FitError):
        learn_fusion(x[:, :3], y)
    with pytest.raises(FitError):
        learn_fusion(x, y, signals=["nope"])


def test_fit_fusion_beats_single_signals_on_its_pools() -> None:
    pools = synthetic_pools(n_queries=90)
    fitted = fit_fusion(pools, thresholds=("max", 1))
    assert any(k.endswith(f">= {fitted.min_grade}") for k in fitted.selection)
    assert fitted.objective.startswith(("pointwise", "lambda"))
    assert fitted.weights.visual > 0 and fitted.weights.text_title > 0
    assert fitted.weights.image_title < fitted.weights.visual  # uninformative signal gets little
    assert fitted.weights_no_heads.attributes == 0.0
    fused = mean_ndcg(pools, fitted.calibration, fitted.weights)
    for single in ("visual", "text_title"):
        w = FusionWeights(bias=0.0, **{s: (1.0 if s == single else 0.0) for s in SIGNALS})
        only = mean_ndcg([p for p in pools if single in p.signals], None, w)
        assert fused["mean"] >= only["mean"] - 1e-9
    assert fused["image+text"] > mean_ndcg([p for p in pools if p.query_type == "image+text"], None,
                                           FusionWeights(bias=0, visual=1, image_title=0, text_image=0,
                                                         text_title=0, attributes=0, popularity=0))["image+text"]
    s = fitted.summary()
    json.dumps(s)  # JSON-serialisable
    assert set(s["gap"]) == set(fitted.calibration.pairs)
    # heads untrained: the attribute weight stays 0
    assert fit_fusion(pools, thresholds=("max",), use_heads=False).weights.attributes == 0.0


def test_rank_pool_orders_like_fuse() -> None:
    p = synthetic_pools(3)[2]
    w = FusionWeights()
    ranked = rank_pool(p, None, w)
    fused = fuse(calibrated_signals(p, None), w)
    assert ranked[0] == p.product_ids[int(np.argmax(fused.scores))]
    assert sorted(ranked) == sorted(p.product_ids)


def test_gap_samples_split_matched_and_unmatched() -> None:
    pools = synthetic_pools()
    cal, _ = fit_pool_calibration(pools)
    g = gap_samples(pools, cal)
    n_image = sum(p.query_type == "image" for p in pools)
    assert g["image_image"]["raw_matched"].size == n_image
    assert g["image_image"]["raw_unmatched"].size == n_image * 24  # grade-1 candidates left out
    assert g["image_image"]["raw_matched"].mean() > g["image_image"]["raw_unmatched"].mean()
    assert g["text_image"]["calibrated_matched"].mean() > g["text_image"]["calibrated_unmatched"].mean()


def test_read_labelled_rows(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text('{"label": 1, "visual": 0.9, "popularity": 0.1}\n\n{"label": 0, "text_image": 0.2, "visual": null}\n')
    x, y = read_labelled_rows(f)
    assert y.tolist() == [1, 0]
    assert x[0, SIGNALS.index("visual")] == 0.9 and np.isnan(x[0, SIGNALS.index("text_image")])
    assert np.isnan(x[1, SIGNALS.index("visual")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": 2}\n{"label": 1, "colour": 1}\nnot json\n{"label": 0, "visual": "high"}\n')
    with pytest.raises(FitError) as err:
        read_labelled_rows(bad)
    msg = str(err.value)
    assert "4 problem" in msg and "line 2" in msg and "colour" in msg and "line 3" in msg


def test_weights_without() -> None:
    w = weights_without(FusionWeights(), "attributes", "popularity")
    assert w.attributes == 0 and w.popularity == 0 and w.visual == FusionWeights().visual


def test_signal_values_invert_the_breakdown() -> None:
    """The harness reads attribute agreement and popularity back from a hit's breakdown."""
    rng = np.random.default_rng(5)
    values = {s: rng.random(7) for s in SIGNALS}
    values["attributes"][2] = np.nan  # absent for one candidate: renormalised
    values["text_image"][:] = np.nan  # absent for the query
    fused = fuse(values, PROBE_WEIGHTS)
    for i in range(7):
        hit = SimpleNamespace(breakdown=fused.breakdown(i))
        got = signal_values(hit, PROBE_WEIGHTS)
        for s in SIGNALS:
            if np.isfinite(values[s][i]):
                assert got[s] == pytest.approx(values[s][i], abs=1e-12)
            else:
                assert s not in got


def test_variants_and_metric_table_consistency() -> None:
    assert variants_for("text", ("single", "raw_sum", "fused_no_heads", "fused"), True) == [
        "single:text_image", "single:text_title", "raw_sum", "fused"]
    assert "single:image_title" not in variants_for("image", ("single",), False)
    from lenscope.client.catalog.rows import Query
    from lenscope.client.eval.config import EvalConfig

    qs = [Query(query_id="i1", type="image", image="a.png", relevance={"p": 3, "q": 1}),
          Query(query_id="t1", type="text", text="red mug", relevance={"r": 3})]
    rankings = {"single:visual": {"i1": ["x", "p", "q"]}, "fused": {"i1": ["p", "q"], "t1": ["z", "r"]},
                "fused_no_heads": {"i1": ["q", "p"], "t1": ["z", "r"]}, "single:text_image": {"t1": ["r"]}}
    table, curves = metric_table(rankings, qs, EvalConfig(catalog=Path("c.jsonl"), workdir=Path(".")))
    assert table["image"]["single:visual"]["R@1"] == 0.0 and table["image"]["single:visual"]["R@5"] == 1.0
    assert table["image"]["fused"]["MRR"] == 1.0 and table["text"]["fused"]["MRR"] == 0.5
    for t in table.values():
        for m in t.values():
            assert m["R@1"] <= m["R@5"] <= m["R@10"]
    assert curves["image"]["raw_ann"][0] == 0.0 and curves["image"]["raw_ann"][1] == 1.0
    h = headline(table)
    assert h["image"]["best_single"]["variant"] == "single:visual"
    assert h["image"]["heads_on_minus_off_R@10_points"] == 0.0
    assert h["image"]["fused_minus_best_single_ndcg10_points"] > 0


def test_ranking_data_matches_rank_pool_and_ndcg_at_k() -> None:
    pools = synthetic_pools(n_queries=12)
    cal, _ = fit_pool_calibration(pools)
    w = FusionWeights(bias=-1.0, visual=2.0, image_title=0.1, text_image=0.4, text_title=1.5, attributes=0.7,
                      popularity=0.05)
    data = RankingData(pools, cal, "max")
    assert data.ndcg_by_type(w) == pytest.approx(mean_ndcg(pools, cal, w))
    # per query nDCG@10 and R@10 (top grade in the top 10) as the metrics module computes them
    from lenscope.client.ranking.metrics import ndcg_at_k, recall_at_k

    nd, rec = data.ndcg_recall(w)
    ranked = [rank_pool(p, cal, w) for p in pools]
    assert nd.tolist() == pytest.approx([ndcg_at_k(r, p.relevance, 10) for r, p in zip(ranked, pools)])
    assert rec.tolist() == [recall_at_k(r, p.relevance, 10) for r, p in zip(ranked, pools)]
    hard = FusionWeights(bias=0.0, visual=0, image_title=0, text_image=0, text_title=0, attributes=0, popularity=1.0)
    assert 0 < data.ndcg_recall(hard)[1].mean() < 1  # popularity alone loses some exact products


def test_learn_lambda_and_refine_improve_ndcg() -> None:
    pools = synthetic_pools(n_queries=60, seed=2)
    cal, _ = fit_pool_calibration(pools, min_grade=1)
    data = RankingData(pools, cal, 1)
    pointwise = learn_fusion(data.x, data.labels).weights
    lam = learn_lambda(data, start=pointwise, iterations=6)
    assert data.ndcg_by_type(lam.weights)["mean"] >= data.ndcg_by_type(pointwise)["mean"] - 1e-9
    assert np.all(lam.weights.vector() >= 0)
    refined, score = refine_coordinate(data, lam.weights)
    assert score >= data.ndcg_by_type(lam.weights)["mean"] - 1e-9
    assert data.ndcg_by_type(refined)["mean"] == pytest.approx(score)  # platt_scale keeps the order
    # the Platt step makes sigmoid(score) a probability: mean predicted ~ base rate
    z = impute_like_fuse(data.x, refined) @ refined.vector() + refined.bias
    assert float(np.mean(1 / (1 + np.exp(-z)))) == pytest.approx(float(data.labels.mean()), abs=0.02)


def test_a_skipped_optional_candidate_says_skipped_not_error() -> None:
    """Issue 15: `rerank fit` printed `"error": "no modality pair could be calibrated"` for a threshold
    that had nothing to calibrate while the fit itself succeeded."""
    fitted = fit_fusion(synthetic_pools(n_queries=40), thresholds=("max", 99), objectives=("pointwise",), refine=False)
    skipped = fitted.selection["calibration at grade >= 99"]
    assert set(skipped) == {"skipped"} and skipped["skipped"]
    assert "error" not in json.dumps(fitted.summary()["selection_ndcg10"])


def conflicting_pools(n_queries: int = 40, n_cand: int = 25, seed: int = 1) -> list[CandidatePool]:
    """Text queries whose relevance only text_title sees, photo+text queries whose relevance only
    text_image sees (text_title is noise there): one weights file cannot serve both."""
    rng = np.random.default_rng(seed)
    pools = []
    for qi in range(n_queries):
        qtype = ("text", "image+text")[qi % 2]
        grades = np.zeros(n_cand, dtype=np.int64)
        grades[rng.choice(n_cand, 3, replace=False)] = 1
        rel = grades > 0
        informative = 0.2 + 0.12 * rel + 0.03 * rng.standard_normal(n_cand)
        noise = 0.25 + 0.06 * rng.standard_normal(n_cand)
        signals = ({"text_title": informative, "text_image": noise} if qtype == "text"
                   else {"text_title": noise, "text_image": informative, "visual": 0.6 + 0.05 * rng.standard_normal(n_cand)})
        signals["popularity"] = rng.random(n_cand)
        ids = tuple(f"q{qi}-p{j}" for j in range(n_cand))
        pools.append(CandidatePool(f"q{qi}", qtype, ids, signals, grades,
                                   {ids[j]: 1 for j in np.flatnonzero(rel)}))
    return pools


def test_fit_type_weights_removes_the_coupling_between_query_types() -> None:
    from lenscope.client.ranking.fusion_fit import fit_type_weights

    pools = conflicting_pools()
    allowed = {"text": ("text_image", "text_title", "popularity"),
               "image+text": ("visual", "text_image", "text_title", "popularity")}
    by_type = fit_type_weights(pools, None, allowed)
    assert set(by_type) == {"text", "image+text"}
    assert by_type["text"].text_title > by_type["text"].text_image
    assert by_type["image+text"].text_image > by_type["image+text"].text_title
    for qtype, w in by_type.items():  # a signal the type may not weigh stays 0
        assert all(getattr(w, s) == 0.0 for s in SIGNALS if s not in allowed[qtype])
    shared = fit_fusion(pools, thresholds=("max",), objectives=("pointwise",), use_heads=False)
    for qtype in by_type:  # measured: text 0.996 vs 0.751, photo+text 0.998 vs 0.893
        mine = [p for p in pools if p.query_type == qtype]
        own = mean_ndcg(mine, None, by_type[qtype])[qtype]
        assert own > mean_ndcg(mine, shared.calibration, shared.weights)[qtype] + 0.05, qtype
    # a type that cannot be fitted (one class only) is left out, not guessed
    flat = [CandidatePool("x", "image", ("a", "b"), {"visual": np.array([0.1, 0.2])}, np.array([1, 1]), {"a": 1, "b": 1})]
    assert fit_type_weights(flat, None, {"image": ("visual",)}) == {}
