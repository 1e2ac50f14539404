"""``lenscope eval`` ranks as serving does: the shipped fit only where its binding holds, and a
``served`` variant that is the engine exactly as the index build left it."""

from __future__ import annotations

from types import SimpleNamespace

from lenscope.client.core.manifest import RankingFit
from lenscope.client.eval.fitting import shipped_fit_applies
from lenscope.client.eval.queries import _engine_state, _variant_weights
from lenscope.client.ranking.fusion import FusionWeights
from lenscope.client.ranking.policy import FitBinding, RankingPolicy, fused_everywhere


def _manifest(**binding: str) -> SimpleNamespace:
    fit = RankingFit(source="x.fusion.json, x.calibration.json", fusion={}, calibration={}, **binding)
    return SimpleNamespace(model_hash="m1", ranking_fit=fit)


def _engine(fingerprint: str | None) -> SimpleNamespace:
    binding = FitBinding(model_hash="m1", catalog_fingerprint=fingerprint) if fingerprint else None
    policy: RankingPolicy = fused_everywhere("self-check", "test", binding)
    return SimpleNamespace(policy=policy, weights=FusionWeights(), calibration=None)


def test_shipped_fit_applies_only_where_serving_applies_it() -> None:
    assert shipped_fit_applies(_manifest(model_hash="m1", catalog_fingerprint="c1"), _engine("c1"))[0]
    applies, why = shipped_fit_applies(_manifest(model_hash="m1", catalog_fingerprint="c1"), _engine("c2"))
    assert not applies and "catalog c1" in why
    applies, why = shipped_fit_applies(_manifest(), _engine("c1"))
    assert not applies and "applied nowhere else" in why
    assert not shipped_fit_applies(_manifest(model_hash="m1", catalog_fingerprint="c1"), _engine(None))[0]
    assert not shipped_fit_applies(SimpleNamespace(model_hash="m1", ranking_fit=None), _engine("c1"))[0]


def test_served_variant_is_the_engine_as_built() -> None:
    engine = _engine("c1")
    before = (engine.weights, engine.calibration, engine.policy)
    weights, calibrated = _variant_weights("served", FusionWeights(visual=9.0), FusionWeights())
    assert weights is None and calibrated
    with _engine_state(engine, weights, None):
        assert (engine.weights, engine.calibration, engine.policy) == before  # the per-type policy stays
    single, _ = _variant_weights("single:visual", FusionWeights(), FusionWeights())
    with _engine_state(engine, single, None):
        assert engine.policy is None and engine.weights == single  # other variants set the policy aside
    assert (engine.weights, engine.calibration, engine.policy) == before
