"""A reduced-precision variant has its own model hash: it serves an fp32 index only when a passed
fidelity record for that variant, against that fp32 model, states the tolerance."""

from __future__ import annotations

from lenscope.client.core.manifest import index_model_hash, variant_model_hash

BASE = "e5c0f4f29d8f673f"


def _served(variant: str, passed: bool | None, base: str = BASE) -> dict:
    own = variant_model_hash(BASE, variant)
    m = {"model_hash": own, "variant": variant, "base_model_hash": BASE, "fidelity": {}}
    if passed is not None:
        m["fidelity"][variant] = {"base_model_hash": base, "passed": passed, "min_cosine": 0.9999997,
                                  "recall_at_10_delta_pt": 0.0, "max_recall_delta_pt": 0.2, "catalog": "c.jsonl"}
    return m


def test_variant_hash_differs_from_fp32() -> None:
    assert variant_model_hash(BASE, "fp32") == BASE
    assert len({BASE, variant_model_hash(BASE, "fp16"), variant_model_hash(BASE, "tensorrt-fp16")}) == 3


def test_fp32_manifest_needs_its_own_index() -> None:
    assert index_model_hash({"model_hash": BASE}) == (BASE, None)


def test_passed_gate_lets_the_variant_serve_the_fp32_index() -> None:
    h, why = index_model_hash(_served("tensorrt-fp16", True))
    assert h == BASE and "fidelity gate passed" in why and "<= 0.2 pt" in why


def test_no_failed_or_foreign_gate_keeps_the_variant_hash() -> None:
    own = variant_model_hash(BASE, "tensorrt-fp16")
    assert index_model_hash(_served("tensorrt-fp16", None)) == (own, None)
    assert index_model_hash(_served("tensorrt-fp16", False)) == (own, None)
    assert index_model_hash(_served("tensorrt-fp16", True, base="0000000000000000")) == (own, None)
    # a record for another variant does not count
    m = _served("tensorrt-fp16", None)
    m["fidelity"]["fp16"] = _served("fp16", True)["fidelity"]["fp16"]
    assert index_model_hash(m) == (own, None)
