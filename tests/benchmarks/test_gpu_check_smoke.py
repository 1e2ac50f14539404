"""benchmarks/gpu_check.py end to end on the CPU (``--device cpu --smoke``): the torch python-backend
runtime (the GPU script's fallback path, eager fp32 here) served by a real tritonserver, the load sweep,
the fidelity gate against the fp32 ONNX graphs and the report. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.export]


def test_gpu_check_cpu_smoke(tmp_path: Path) -> None:
    env = dict(os.environ, LENSCOPE_BENCH_WORK=str(tmp_path / "work"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--smoke",
         "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert data["runtime"]["runtime"] == "torch" and data["runtime"]["device"] == "cpu"
    assert "--device cpu" in data["runtime"]["reason"]
    # every (model, batch, concurrency) point was measured or listed as skipped, none lost
    seen = {(p["model"], p["batch"], p["concurrency"]) for p in data["points"] + data["skipped"]}
    assert seen == {(m, b, c) for m in ("embed_image", "embed_text", "image_encoder") for b in (1, 2) for c in (1, 2)}
    measured = [p for p in data["points"] if p.get("throughput")]
    assert measured, data["points"]
    assert all(0 < p["p50_ms"] <= p["p99_ms"] for p in measured)
    assert {b["batch"] for b in data["inprocess"]} == {1, 2} and all(b["runs"] > 0 for b in data["inprocess"])
    f = data["fidelity"]
    # fp32 torch served vs fp32 ONNX: the same tower, so the gate must pass with near-identical rows
    assert f["variant"] == "fp32" and f["passed"] is True and f["min_cosine"] > 0.9999
    assert f["n_products"] == 24 and f["n_queries"] > 0 and abs(f["recall_at_10_delta_pt"]) <= 0.2
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "Runtime: **torch** on cpu" in md and "Fidelity gate" in md
    # a CPU smoke run never records a fidelity variant into the export manifest
    manifest = json.loads((tmp_path / "work" / "onnx" / "export_manifest.json").read_text())
    assert not manifest.get("fidelity")
