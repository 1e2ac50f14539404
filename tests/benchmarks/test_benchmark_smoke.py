"""The benchmark commands run end to end at a tiny size and write sane reports (slow tier; one fast check).

Each script runs as a user would start it (``python benchmarks/<name>.py``, a subprocess) with its smoke
flags, writing into a temporary report directory; the checks are on the report's shape and on facts that
do not depend on timing (exact search has recall 1, counts add up, files exist). No timing is asserted:
these machines are shared and the numbers are whatever they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="session")
def bench_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch directory for the session: the exported model is shared by the four scripts."""
    return tmp_path_factory.mktemp("bench-work")


def run_benchmark(name: str, args: list[str], out: Path, work: Path, timeout: int = 480) -> dict:
    env = dict(os.environ, LENSCOPE_BENCH_WORK=str(work), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out), "--workdir", str(work / name)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{name}.py exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    for ext in ("json", "md", "png"):
        path = out / f"{name}.{ext}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    assert data["machine"]["cpus_usable"] >= 1 and data["machine"]["cpu"]
    md = (out / f"{name}.md").read_text()
    assert md.startswith(f"# {name} benchmark") and "Machine:" in md
    return data


@pytest.mark.slow
@pytest.mark.integration
def test_perf_analyzer_smoke(tmp_path: Path, bench_work: Path) -> None:
    data = run_benchmark("perf_analyzer", [
        "--concurrency", "1,2", "--configs", "batch0-1x,fused-2x", "--window-ms", "400", "--max-trials", "3",
        "--inprocess-seconds", "0.5", "--inputs", "12", "--rounds", "2"], tmp_path, bench_work)
    assert data["perf_analyzer"]["version"].startswith("2.51")
    points = [r for r in data["results"] if "throughput" in r]
    assert len(data["results"]) == 2 * 2 * 2  # configs x models x concurrencies, the rounds merged
    assert len(data["rounds_raw"]["results"]) == 2 * 2 * 2 * 2  # ... each attempted once per round
    assert points, data["results"]
    for r in points:
        assert r["throughput"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        if r["config"] == "batch0-1x":  # the ensemble reports its composing models; a fused model has none
            assert set(r["composing"]) & {"image_encoder", "text_encoder"}
    assert data["summary"]["shipped_config"] == "fused-2x"
    assert {(r["model"], r["concurrency"]) for r in data["inprocess"]} == {
        (m, c) for m in ("embed_image", "embed_text") for c in (1, 2)}
    assert all(r["requests"] > 0 for r in data["inprocess"])
    ratios = data["summary"]["triton_vs_inprocess"]
    assert ratios and all(r["p50_ratio"] is None or r["p50_ratio"] > 0 for r in ratios)
    assert data["inputs"]["images"] == 12 and data["inputs"]["texts"] == 12
    assert data["gpu_reference"]["published_t4_vit_b16_fp16_batch1_ms"] == 3.5


@pytest.mark.slow
def test_ann_smoke(tmp_path: Path, bench_work: Path) -> None:
    data = run_benchmark("ann", [
        "--n", "6000", "--dim", "64", "--queries", "60", "--nlist", "32", "--pq-m", "16",
        "--ef-search", "16,64", "--nprobe", "2,8", "--rescore", "4", "--rounds", "1",
        "--point-seconds", "2", "--flat-seconds", "2", "--catalog-products", "120", "--milvus-n", "1500",
        "--milvus-ef", "64"], tmp_path, bench_work)
    synthetic, real = data["datasets"]
    assert synthetic["n"] == 6000 and synthetic["dim"] == 64
    assert real["n"] == 120 and real["info"]["photo_queries"] + real["info"]["text_queries"] == real["queries"]
    for ds in (synthetic, real):
        kinds = {idx["kind"]: idx for idx in ds["indexes"]}
        assert set(kinds) == {"flat", "hnsw", "ivfpq"}
        assert kinds["flat"]["points"][0]["recall@10"] == 1.0  # exact search is its own oracle
        for idx in ds["indexes"]:
            assert idx["build_seconds"] >= 0 and idx["total_bytes_per_vector"] >= idx["raw_bytes_per_vector"] > 0
            for p in idx["points"]:
                assert 0.0 <= p["recall@10"] <= 1.0 and p["qps"] > 0 and p["queries"] > 0
        assert len(kinds["hnsw"]["points"]) == 2 and len(kinds["ivfpq"]["points"]) == 2
    assert kinds["ivfpq"]["faiss_bytes_per_vector"] < kinds["hnsw"]["faiss_bytes_per_vector"]
    milvus = data["milvus"]
    assert milvus.get("skipped") or (milvus["n"] == 1500 and milvus["points"][0]["recall@10"] > 0)


@pytest.mark.slow
@pytest.mark.integration
def test_load_smoke(tmp_path: Path, bench_work: Path) -> None:
    data = run_benchmark("load", [
        "--products", "60", "--fractions", "0.5,3", "--extra-steps", "0", "--step-seconds", "3",
        "--pause-seconds", "0.5", "--warmup-seconds", "1", "--calibrate-seconds", "2", "--max-inflight", "4",
        "--compare-inflight", "16", "--compare-rounds", "2", "--overload", "2"], tmp_path, bench_work)
    assert len(data["steps"]) == 2
    for step in data["steps"]:
        assert step["requests"] == sum(step["codes"].values()) > 0
        assert set(step["codes"]) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE",
                                      "CLIENT_DROPPED", "CLIENT_CANCELLED"}
        assert step["offered_rps"] > 0
    assert data["steps"][0]["codes"].get("OK", 0) > 0
    assert {"offered_rps", "rule", "max_ok_rps_any_step"} <= set(data["saturation"])
    assert data["capacity_estimate"]["ok_per_s"] > 0
    if data["saturation"]["offered_rps"]:  # overload steps and the side-by-side runs need a saturation point
        assert [o["x_saturation"] for o in data["overload"]] == [2.0]
        assert {"goodput_ratio", "shed_latency_ms", "ok_rps"} <= set(data["overload"][0])
        assert [c["variant"] for c in data["compare"]] == ["shipped", "max_inflight 16", "max_queued_rpcs 64",
                                                           "gil_switch_interval_ms 1",
                                                           "admission front (client/service/front.py)",
                                                           "tritonserver nice 10"]
        for row in data["compare"]:  # each row pools its variant's two rounds (steps of 3 s)
            assert row["rounds"] == 2
            assert row["ok_rps"] == pytest.approx(row["codes"].get("OK", 0) / 6, abs=0.01)
        for row in [*data["overload"], *data["compare"]]:
            shed = row["shed_latency_ms"]["p99"]  # from the due time; after send leaves the generator's lag out
            assert shed is None or row["shed_after_send_ms"]["p99"] <= shed
            probe = row["probe"]  # the light client beside the step (own process)
            assert probe["calls"] == sum(probe["codes"].values()) > 0
            assert probe["shed"] == probe["codes"].get("RESOURCE_EXHAUSTED", 0)
    assert data["setup"]["service_exit_code"] == 0


@pytest.mark.slow
@pytest.mark.integration
def test_scale_smoke(tmp_path: Path, bench_work: Path) -> None:
    data = run_benchmark("scale", ["--sizes", "3000", "--kinds", "flat,ivfpq", "--queries", "3",
                                   "--recall-queries", "10", "--flat-max", "2000"], tmp_path, bench_work)
    flat, ivfpq = data["rows"]
    assert "skipped" in flat and "service" not in flat  # above --flat-max: said, not measured
    assert ivfpq["build"]["index_config"]["kind"] == "ivfpq" and ivfpq["build"]["index_config"]["rescore_factor"] == 16
    assert 0.0 <= ivfpq["ann"]["recall_at_10"] <= 1.0 and ivfpq["disk_bytes_per_product"]["total"] > 0
    for q in ("text", "photo", "photo+text", "filtered"):
        stages = ivfpq["service"][q]
        assert {"embed", "retrieve", "total", "client"} <= set(stages) and stages["client"]["p50"] > 0
    assert data["profile"] is None  # --profile not given


@pytest.mark.slow
@pytest.mark.integration
def test_soak_smoke(tmp_path: Path, bench_work: Path) -> None:
    data = run_benchmark("soak", [
        "--duration", "12", "--window", "4", "--rate", "15", "--sample-seconds", "1", "--products", "60"],
        tmp_path, bench_work)
    assert data["rate_rps"] == 15
    assert data["requests"] == sum(data["codes"].values()) == sum(w["requests"] for w in data["windows"])
    assert data["requests"] == 12 * 15
    assert len(data["windows"]) == 3
    assert data["rss_samples"] and all(s["service_mib"] > 0 and s["triton_mib"] > 0 for s in data["rss_samples"])
    assert data["rss_samples"][0]["stubs"] >= 1  # python-backend stubs found under tritonserver
    for key in ("service_mib", "triton_mib", "stubs_mib"):
        assert data["rss_growth"][key]["last_mib"] > 0


@pytest.mark.slow
def test_incremental_synthetic_smoke(tmp_path: Path, bench_work: Path) -> None:
    """incremental.py --synthetic (no Triton): every row is reused or embedded, counts match the change."""
    env = dict(os.environ, LENSCOPE_BENCH_WORK=str(bench_work / "incremental"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "incremental.py"), "--synthetic", "--products", "600",
                           "--changes", "0.02,0.1", "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=480)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "incremental.json").read_text())
    results = data["results"]
    assert results["synthetic"] and results["full"]["indexed"] == 600 and results["full"]["build"]["mode"] == "full"
    assert [c["fraction"] for c in results["changes"]] == [0.02, 0.1]
    for c in results["changes"]:
        build, catalog = c["incremental"]["build"], c["catalog"]
        assert build["mode"] == "incremental", build
        assert build["reused"] + build["embedded"] == catalog["rows"] == c["incremental"]["indexed"]
        assert (build["removed"], build["embedded"]) == (catalog["removed"], catalog["retitled"] + catalog["added"])
        assert build["files_hashed"] + build["files_known"] == catalog["rows"]  # one image per row, no photos
        assert c["remove"]["removed"] == max(1, catalog["rows"] // 100)
    assert "| incremental, 10% changed |" in (tmp_path / "incremental.md").read_text()


def test_gpu_reference_spec_is_valid() -> None:
    """The ViT-B-16 spec the GPU instructions export (benchmarks/README.md) passes spec validation (fast)."""
    from lenscope.client.core.modelspec import load_spec

    spec = load_spec(BENCHMARKS / "specs" / "vit-b-16.json")
    assert (spec.architecture, spec.embed_dim, spec.preprocess.image_size, spec.context_length) == ("ViT-B-16", 512, 224, 77)


def test_scale_reuses_only_a_bundle_of_the_same_size_kind_seed_and_model(tmp_path: Path) -> None:
    """``--reuse`` (build under load, measure on a quiet box later) never serves a bundle other than the
    one asked for: any differing key means a rebuild (fast)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import scale
    finally:
        sys.path.remove(str(BENCHMARKS))
    record = tmp_path / scale.BUILD_RECORD
    assert scale._kept_build(record, 1000, "hnsw", 0, "abc") is None  # nothing kept
    record.write_text("{not json")
    assert scale._kept_build(record, 1000, "hnsw", 0, "abc") is None
    build = {"timings_s": {"total_s": 12.5}}
    record.write_text(json.dumps({"products": 1000, "kind": "hnsw", "seed": 0, "model_hash": "abc", "build": build,
                                  "load_average": [3.5, 2.0, 1.0]}))
    kept = scale._kept_build(record, 1000, "hnsw", 0, "abc")
    assert kept["timings_s"] == build["timings_s"] and kept["load_average_at_build"] == [3.5, 2.0, 1.0]
    for other in ((2000, "hnsw", 0, "abc"), (1000, "ivfpq", 0, "abc"), (1000, "hnsw", 1, "abc"), (1000, "hnsw", 0, "def")):
        assert scale._kept_build(record, *other) is None, other
    assert "kept from an earlier run; load average then 3.5" in scale._build_cell({**kept, "reused": True})
