"""The evaluation harness end to end through a real tritonserver on a small generated catalog:
`eval` writes a consistent report; `rerank fit` writes weights + calibration the engine accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lenscope.client.ranking.calibration import load_calibration
from lenscope.client.synth.catalog import generate_catalog
from lenscope.client.cli.eval import eval_command, fit_fusion_command
from lenscope.client.ranking.fusion import load_weights

pytestmark = pytest.mark.integration

N = 80


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("eval-catalog"), N, seed=11, image_size=64).catalog


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("fit")(fit_fusion_command)
    return app


def _check_metrics(m: dict) -> None:
    for key in ("R@1", "R@5", "R@10", "nDCG@10", "MRR", "Rfrac@10"):
        assert 0.0 <= m[key] <= 1.0, (key, m)
    assert m["R@1"] <= m["R@5"] <= m["R@10"], m
    assert m["MRR"] <= m["R@10"] + (1 - m["R@10"]) * 0.1 + 1e-9  # a first hit below rank 10 adds < 0.1
    assert m["n"] > 0


def test_eval_command_writes_a_consistent_report(exported_repo: Path, catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(_app(), [
        "eval", "--catalog", str(catalog), "--repository", str(exported_repo), "--no-shipped",
        "--fit-on", "val", "--out", str(out), "--workdir", str(tmp_path / "work"),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    md = (out / "eval.md").read_text()
    for png in ("eval_recall.png", "eval_gap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in md

    assert report["catalog"]["split"] == "test"
    by_type = report["queries"]["by_type"]
    assert set(report["metrics"]) == {t for t, n in by_type.items() if n} == {"image", "text", "image+text"}
    for t, rows in report["metrics"].items():
        assert {"raw_sum", "calibrated", "fused", "fused_no_heads"} <= set(rows), t
        assert any(v.startswith("single:") for v in rows)
        for m in rows.values():
            _check_metrics(m)
            assert m["n"] == by_type[t]
    for curve in report["recall_curves"]["types"].values():
        for ys in curve.values():
            assert all(0 <= y <= 1 for y in ys) and ys == sorted(ys)  # Recall@K never drops with K
    # calibration + fusion were fitted on the val split through the stack, all four pairs
    assert report["ranking"]["calibration_source"].startswith("fitted on the val split")
    assert set(report["ranking"]["fit"]["gap"]) == {"image_image", "image_title", "text_image", "text_title"}
    assert report["ranking"]["weights_no_heads"]["attributes"] == 0.0
    # the repository is the shipped default: fidelity found its spec by checkpoint hash and passed
    fid = report["fidelity"]
    assert fid["checked"] and fid["ok"], fid
    for t in ("image", "text"):
        assert fid["types"][t]["in_verdict"] and abs(fid["types"][t]["diff_points"]) <= 0.2
    heads = report["attributes"]
    assert heads["heads_trained"] and set(heads["catalog_images"]) == {"category", "color", "pattern"}
    for scores in heads["catalog_images"].values():
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1
    assert "## Headline" in md and "## Export fidelity" in md


def test_fit_command_writes_files_the_engine_reads(exported_repo: Path, catalog: Path, tmp_path: Path) -> None:
    fusion, cal = tmp_path / "fusion.json", tmp_path / "calibration.json"
    result = CliRunner().invoke(_app(), [
        "fit", "--catalog", str(catalog), "--repository", str(exported_repo), "--out", str(fusion),
        "--calibration-out", str(cal), "--workdir", str(tmp_path / "work"),
    ])
    assert result.exit_code == 0, result.output
    weights = load_weights(fusion)
    assert weights.visual > 0
    calibration = load_calibration(cal)
    assert set(calibration.pairs) == {"image_image", "image_title", "text_image", "text_title"}
    # the binding beside the weights: this model and this catalog (what `index build` of it computes)
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.eval.fitting import catalog_binding
    from lenscope.client.ranking.binding_file import load_binding

    binding = load_binding(tmp_path / "fusion.binding.json")
    assert binding.model_hash == load_manifest(exported_repo).model_hash == calibration.model_hash
    assert binding == catalog_binding(catalog, binding.model_hash, "val") and binding.products == N
    assert "fusion.binding.json" in result.output
    # refusing the test split silently is not allowed: it warns; bad inputs exit 2
    bad = CliRunner().invoke(_app(), ["fit", "--out", str(fusion)])
    assert bad.exit_code == 2
