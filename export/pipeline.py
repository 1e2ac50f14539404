"""spec -> torch model -> ONNX -> verify -> manifest -> Triton model repository."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from lenscope.client.core import contract
from lenscope.client.core.manifest import CheckpointInfo, Manifest, RankingFit, compute_model_hash
from lenscope.client.core.modelspec import load_spec
from lenscope.client.core.outputs import check_not_input, check_output_dir
from lenscope.client.ranking.calibration import parse_calibration
from lenscope.client.ranking.fusion import parse_weights
from lenscope.export.model import build_model, sha256_file
from lenscope.export.onnx_export import export_onnx
from lenscope.export.repository import RepositorySettings, check_repository_out, write_repository
from lenscope.export.verify import verify

DEFAULT_SPEC = Path(__file__).parent / "specs" / "lenscope-tiny.json"


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("lenscope", "torch", "open_clip_torch", "onnx", "onnxruntime", "numpy", "pillow", "nvidia-pytriton"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def default_vocab() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


def ranking_fit_beside(checkpoint: Path | None) -> RankingFit | None:
    """The fit shipped beside a checkpoint (`<stem>.fusion.json` + `<stem>.calibration.json`), both or
    neither, validated here so that a broken file stops the export instead of a later index build.

    Its binding: the model hash is the one the calibration records (what it was fitted with); the
    catalog fingerprint comes from an optional `<stem>.binding.json` (``{"catalog_fingerprint": ...}``,
    the fingerprint `lenscope index inspect` shows for the catalog the fit was made on). Without it
    the fit is bound to no catalog, and index builds fit their own (see ``RankingFit``)."""
    if checkpoint is None:
        return None
    files = {kind: checkpoint.with_name(f"{checkpoint.stem}.{kind}.json") for kind in ("fusion", "calibration")}
    if not all(f.is_file() for f in files.values()):
        return None
    data = {kind: json.loads(f.read_text(encoding="utf-8")) for kind, f in files.items()}
    parse_weights(data["fusion"], str(files["fusion"]))
    cal = parse_calibration(data["calibration"], f"calibration file {files['calibration']}")
    binding_file = checkpoint.with_name(f"{checkpoint.stem}.binding.json")
    fingerprint = None
    if binding_file.is_file():
        binding = json.loads(binding_file.read_text(encoding="utf-8"))
        fingerprint = binding.get("catalog_fingerprint") if isinstance(binding, dict) else None
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"{binding_file}: catalog_fingerprint must be a non-empty string, got {fingerprint!r}")
    return RankingFit(source=", ".join(f.name for f in files.values()), model_hash=cal.model_hash,
                      catalog_fingerprint=fingerprint, **data)


def training_summary(meta: dict) -> dict:
    """What the manifest carries of a checkpoint's training metadata: how it was judged (the held-out
    table, without the per-evaluation history), its label sets, and what it started from."""
    held = meta.get("held_out")
    return {
        "trainer": meta.get("trainer"), "catalog_sha256": meta.get("catalog_sha256"),
        "init_sha256": meta.get("init_sha256"), "steps": meta.get("steps"), "labels": meta.get("labels"),
        "held_out": None if held is None else {k: v for k, v in held.items() if k != "evaluations"},
    }


def export_model(spec_path: Path = DEFAULT_SPEC, out: Path = Path("model_repository/cpu"),
                 settings: RepositorySettings = RepositorySettings(), onnx_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> Manifest:
    """Export and verify a model, then write its repository. Raises VerificationError on mismatch."""
    spec_path = Path(spec_path)
    check_repository_out(Path(out))  # before minutes of work: never replace a folder we did not write
    if onnx_dir is not None:
        check_not_input(Path(onnx_dir), "--onnx-dir", {"--out": Path(out)})
        check_output_dir(Path(onnx_dir), "--onnx-dir", (contract.MANIFEST_FILE, contract.IMAGE_ONNX), "ONNX files")
    spec = load_spec(spec_path)
    log(f"building {spec.name} ({spec.architecture}) from {spec_path}")
    model = build_model(spec, spec_path.parent)
    n_params = sum(p.numel() for p in model.clip.parameters())
    log(f"  {n_params / 1e6:.2f}M parameters; weights: {model.checkpoint or f'seeded init (seed {spec.init_seed})'}")
    with tempfile.TemporaryDirectory(prefix="lenscope-onnx-") as tmp:
        work = Path(onnx_dir) if onnx_dir else Path(tmp)
        paths = export_onnx(model, work)
        log("  exported ONNX: " + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths.values()))
        report = verify(model, paths)
        for name, checks in report.towers.items():
            log(f"  verified {name}: " + "; ".join(
                f"batch {c.batch} max|diff| {c.max_abs_diff:.2e} min cos {c.min_cosine:.7f}" for c in checks))
        onnx_sha = {name: sha256_file(p) for name, p in paths.items()}
        manifest = Manifest(
            model_hash=compute_model_hash(spec, model.checkpoint_sha256, onnx_sha),
            spec=spec,
            profile=settings.profile,
            weights="checkpoint" if model.checkpoint else "seeded-init",
            checkpoint=CheckpointInfo(file=model.checkpoint.name, sha256=model.checkpoint_sha256) if model.checkpoint else None,
            heads_trained=model.heads_trained,
            onnx_sha256=onnx_sha,
            verification=report.model_dump(),
            tool_versions=tool_versions(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            extras={"parameters": n_params, "repository_settings": settings.model_dump(),
                    **({"training": training_summary(model.meta)} if model.meta else {})},
            ranking_fit=ranking_fit_beside(model.checkpoint),
        )
        from lenscope.export.dali_pipeline import resolve_preprocess  # nvidia-dali itself only if installed

        manifest, settings, dali_model = resolve_preprocess(manifest, settings, log=log)
        served = manifest
        if settings.profile == "gpu" and settings.gpu_backend == "tensorrt_plan":  # plans built where served
            from lenscope.export.plan_build import deploy_time_manifest

            served = deploy_time_manifest(manifest)
            log("  tensorrt_plan without prebuilt engines: each encoder ships its ONNX graph and a plan recipe; "
                "run 'lenscope model build-plans' in the serving image on the serving GPU before tritonserver "
                "(k8s/components/trt-plans does, as an init container)")
        write_repository(Path(out), served, paths, default_vocab(), settings, dali_model=dali_model, log=log)
        if onnx_dir:  # everything `lenscope model build-trt` needs, next to the graphs (the fp32 manifest)
            shutil.copyfile(default_vocab(), work / contract.BPE_VOCAB_FILE)
            (work / contract.MANIFEST_FILE).write_text(manifest.to_json() + "\n")
    log(f"wrote {settings.profile} repository {out} (model hash {served.model_hash}); manifest {Path(out) / contract.MANIFEST_FILE}")
    return served
