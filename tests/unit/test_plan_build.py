"""Plans built where they are served (`lenscope model build-plans`): a tensorrt_plan export without
engines ships each graph with a recipe; the build runs trtexec with the recipe's shape profile, records
and checks the plan, keeps it in a cache keyed by model, TensorRT, GPU and profile, and reuses it.

A fake trtexec (a script that writes bytes and prints trtexec's banner) stands in for NVIDIA's: what is
tested is the argv, the records, the cache and the errors, never a real engine (no GPU here)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest, load_manifest
from lenscope.client.core.modelspec import load_spec
from lenscope.export.plan_build import (RECIPE_FILE, PlanBuildError, build_repository_plans, deploy_time_manifest,
                                        read_recipe, version_from_banner)
from lenscope.export.plan_check import Runtime, check_repository_plans, read_sidecar
from lenscope.export.repository import RepositorySettings, write_repository

SPEC = load_spec(Path(__file__).parents[2] / "export" / "specs" / "lenscope-tiny.json")
H100 = Runtime(tensorrt_version="10.5.0.18", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
ENCODERS = (contract.IMAGE_ENCODER, contract.TEXT_ENCODER, contract.ATTRIBUTE_HEADS)

FAKE_TRTEXEC = """#!{python}
import os, sys, pathlib
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec " + " ".join(sys.argv[1:]))
with open(os.environ["FAKE_TRTEXEC_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_TRTEXEC_FAIL"):
    print("[E] [TRT] ModelImporter.cpp:949: ERROR: unsupported operator")
    sys.exit(1)
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
pathlib.Path(opts["saveEngine"]).write_bytes(b"ftrt engine for " + opts["onnx"].encode())
print("&&&& PASSED TensorRT.trtexec")
"""


@pytest.fixture()
def trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    calls = tmp_path / "trtexec.calls"
    monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(calls))
    return str(exe), calls


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def export_repo(tmp: Path, name: str = "repo") -> Path:
    """What `lenscope model export --profile gpu --gpu-backend tensorrt_plan` writes, without torch."""
    base = Manifest(model_hash="0123456789abcdef", spec=SPEC, profile="gpu", weights="seeded-init",
                    heads_trained=True, onnx_sha256={}, verification={}, tool_versions={}, created_at="now")
    graphs = {}
    for model, file in zip(ENCODERS, (contract.IMAGE_ONNX, contract.TEXT_ONNX, contract.HEADS_ONNX)):
        graphs[model] = tmp / file
        graphs[model].write_bytes(f"graph of {model}".encode())
    vocab = tmp / contract.BPE_VOCAB_FILE
    vocab.write_bytes(b"vocab")
    settings = RepositorySettings(profile="gpu", gpu_backend="tensorrt_plan", gpu_preprocess="python",
                                  max_batch_size=32, opt_batch_size=8)
    return write_repository(tmp / name, deploy_time_manifest(base), graphs, vocab, settings, log=lambda m: None)


def test_a_tensorrt_plan_export_without_engines_ships_graphs_and_recipes(tmp_path: Path) -> None:
    repo = export_repo(tmp_path)
    manifest = load_manifest(repo)
    assert manifest.variant == "tensorrt-fp16" and manifest.base_model_hash == "0123456789abcdef"
    assert manifest.model_hash != manifest.base_model_hash  # fp16 engines: their own hash, served after fidelity
    size = SPEC.preprocess.image_size
    for model in ENCODERS:
        assert (repo / model / "1" / "model.onnx").read_bytes() == f"graph of {model}".encode()
        assert not (repo / model / "1" / contract.TRT_PLAN).exists()
        recipe = read_recipe(repo / model / "1" / RECIPE_FILE)
        assert (recipe.min_batch, recipe.opt_batch, recipe.max_batch, recipe.fp16) == (1, 8, 32, True)
        assert recipe.model_hash == "0123456789abcdef"
        assert 'platform: "tensorrt_plan"' in (repo / model / "config.pbtxt").read_text()
    assert read_recipe(repo / contract.IMAGE_ENCODER / "1" / RECIPE_FILE).inputs == {contract.PIXEL_VALUES: [3, size, size]}
    assert read_recipe(repo / contract.TEXT_ENCODER / "1" / RECIPE_FILE).inputs == {contract.INPUT_IDS: [SPEC.context_length]}


def test_plans_are_built_with_the_recipe_profile_recorded_and_then_reused(tmp_path: Path, trtexec) -> None:
    exe, calls = trtexec
    repo, cache = export_repo(tmp_path), tmp_path / "cache"
    done = build_repository_plans(repo, H100, cache, exe, log=lambda m: None)
    assert {m: outcome for m, (outcome, _) in done.items()} == {m: "built" for m in ENCODERS}
    size = SPEC.preprocess.image_size
    image_call = next(c for c in _calls(calls) if contract.IMAGE_ENCODER in c)
    for flag in (f"--minShapes={contract.PIXEL_VALUES}:1x3x{size}x{size}",
                 f"--optShapes={contract.PIXEL_VALUES}:8x3x{size}x{size}",
                 f"--maxShapes={contract.PIXEL_VALUES}:32x3x{size}x{size}", "--fp16", "--timingCacheFile="):
        assert flag in image_call, (flag, image_call)
    info = read_sidecar(repo / contract.IMAGE_ENCODER / "1" / contract.TRT_PLAN)
    assert (info.tensorrt_version, info.compute_capability, info.opt_batch, info.model_hash) == (
        "10.5.0", "9.0", 8, "0123456789abcdef")  # the version trtexec's banner names
    assert set(check_repository_plans(repo, H100)) == set(ENCODERS)  # what the serving side checks

    assert {o for o, _ in build_repository_plans(repo, H100, cache, exe, log=lambda m: None).values()} == {"present"}
    second = export_repo(tmp_path, "second-pod")  # another pod, same model, GPU and TensorRT: from the cache
    assert {o for o, _ in build_repository_plans(second, H100, cache, exe, log=lambda m: None).values()} == {"cached"}
    assert len(_calls(calls)) == len(ENCODERS), "trtexec ran once per model in all"

    t4 = Runtime(tensorrt_version="10.5.0.18", gpu_name="Tesla T4", compute_capability="7.5")
    third = export_repo(tmp_path, "t4-pod")
    assert {o for o, _ in build_repository_plans(third, t4, cache, exe, log=lambda m: None).values()} == {"built"}
    assert read_sidecar(third / contract.TEXT_ENCODER / "1" / contract.TRT_PLAN).compute_capability == "7.5"


def test_a_corrupted_cached_plan_is_rebuilt_not_served(tmp_path: Path, trtexec) -> None:
    exe, calls = trtexec
    cache = tmp_path / "cache"
    build_repository_plans(export_repo(tmp_path), H100, cache, exe, log=lambda m: None)
    cached = next(cache.rglob(f"{contract.TEXT_ENCODER}/*/{contract.TRT_PLAN}"))
    cached.write_bytes(b"flipped bytes")
    done = build_repository_plans(export_repo(tmp_path, "again"), H100, cache, exe, log=lambda m: None)
    assert done[contract.TEXT_ENCODER][0] == "built" and done[contract.IMAGE_ENCODER][0] == "cached"


def test_a_failing_trtexec_names_the_model_and_leaves_no_plan(tmp_path: Path, trtexec, monkeypatch) -> None:
    exe, _ = trtexec
    repo, cache = export_repo(tmp_path), tmp_path / "cache"
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    with pytest.raises(PlanBuildError, match=r"(?s)attribute_heads: trtexec exited with code 1.*unsupported operator"):
        build_repository_plans(repo, H100, cache, exe, log=lambda m: None)
    assert not list(repo.glob(f"*/1/{contract.TRT_PLAN}")) and not list(cache.rglob("*.plan"))


def test_refusals_name_what_is_wrong(tmp_path: Path, trtexec) -> None:
    exe, _ = trtexec
    repo = export_repo(tmp_path)
    with pytest.raises(PlanBuildError, match="trtexec not found at /nope/trtexec"):
        build_repository_plans(repo, H100, tmp_path / "cache", "/nope/trtexec", log=lambda m: None)
    with pytest.raises(PlanBuildError, match="no GPU or TensorRT found here"):
        build_repository_plans(repo, Runtime(tensorrt_version=None, gpu_name=None, compute_capability=None),
                               tmp_path / "cache", exe, log=lambda m: None)
    recipe = repo / contract.TEXT_ENCODER / "1" / RECIPE_FILE
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "model_hash": "ffffffffffffffff"}))
    with pytest.raises(PlanBuildError, match=r"field model_hash: 'ffffffffffffffff' is not the repository's model"):
        build_repository_plans(repo, H100, tmp_path / "cache", exe, log=lambda m: None)
    recipe.write_text('{"inputs": {}}')
    with pytest.raises(PlanBuildError, match=f"{RECIPE_FILE}: field inputs"):
        build_repository_plans(repo, H100, tmp_path / "cache", exe, log=lambda m: None)
    shutil.rmtree(repo)


@pytest.mark.parametrize("banner, version", [("[TensorRT v100500] # trtexec", "10.5.0"),
                                             ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601]", "8.6.1"),
                                             ("no banner", None)])
def test_version_from_banner(banner: str, version: str | None) -> None:
    assert version_from_banner(banner) == version
