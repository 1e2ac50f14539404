"""The export manifest: everything a consumer of a model repository needs, in one typed file.

`model_hash` identifies the model's numerics (spec + weights + exported graphs), not the profile or
the export time, so an index built through the cpu profile still matches the gpu profile of the
same model, and any change of weights invalidates it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from lenscope.client.core import contract
from lenscope.client.core.modelspec import ModelSpec

SCHEMA_VERSION = 1


class CheckpointInfo(BaseModel):
    file: str
    sha256: str


class RankingFit(BaseModel):
    """Calibration + fusion weights fitted for this model (files beside its checkpoint at export time).

    The manifest carries them so that consumers find a model's fit through the model repository alone,
    never through the export package's folders. `source` names the files they came from."""


    source: str
    fusion: dict[str, Any]
    calibration: dict[str, Any]
    # What the fit was fitted on: it is applied only to an index of this model AND this catalog
    # (`lenscope.client.ranking.policy.binding_mismatch`). Absent (manifests written before the
    # binding existed): the fit is never applied to any catalog; the index build fits its own.
    model_hash: str | None = None
    catalog_fingerprint: str | None = None


Variant = Literal["fp32", "fp16", "tensorrt-fp16", "tensorrt-fp32", "torch-fp16"]  # torch-fp16: benchmarks/gpu_check.py


class FidelityRecord(BaseModel):
    """A variant measured against the fp32 ONNX graphs of `base_model_hash` on a catalog
    (`lenscope model fidelity`): per-row cosine of the embeddings and the Recall@10 change."""

    variant: Variant
    base_model_hash: str
    catalog: str
    n_products: int
    n_queries: int
    min_cosine: float
    mean_cosine: float
    recall_at_10_fp32: float
    recall_at_10_variant: float
    recall_at_10_delta_pt: float  # fp32 minus variant, percentage points
    max_recall_delta_pt: float  # the stated tolerance
    min_cosine_bound: float
    passed: bool
    runtime: str  # what ran the variant, e.g. "onnxruntime CPUExecutionProvider"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    model_hash: str
    spec: ModelSpec
    profile: Literal["cpu", "gpu"]
    weights: Literal["checkpoint", "seeded-init"]
    checkpoint: CheckpointInfo | None = None
    heads_trained: bool
    onnx_sha256: dict[str, str]
    verification: dict[str, Any]
    tool_versions: dict[str, str]
    created_at: str
    extras: dict[str, Any] = {}
    ranking_fit: RankingFit | None = None
    # What the encoders compute in. fp32 (the exported graphs) unless a repository serves another
    # variant; such a repository's model_hash is its own (variant_model_hash), and its index may
    # only be one of the fp32 model when a passed fidelity record for that variant states so.
    variant: Variant = "fp32"
    base_model_hash: str | None = None
    fidelity: dict[str, FidelityRecord] = {}

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return {a.name: a.labels for a in self.spec.attributes}

    def dimensions(self) -> contract.Dimensions:
        return dimensions_of(self.spec)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def dimensions_of(spec: ModelSpec) -> contract.Dimensions:
    return contract.Dimensions(
        image_size=spec.preprocess.image_size,
        embed_dim=spec.embed_dim,
        context_length=spec.context_length,
        attributes=tuple((a.name, len(a.labels)) for a in spec.attributes),
    )


def compute_model_hash(spec: ModelSpec, checkpoint_sha256: str | None, onnx_sha256: dict[str, str]) -> str:
    payload = json.dumps(
        {"spec": spec.model_dump(mode="json"), "checkpoint": checkpoint_sha256, "onnx": dict(sorted(onnx_sha256.items()))},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if path.is_dir():
        path = path / contract.MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {contract.MANIFEST_FILE} at {path}; run 'lenscope model export' first")
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def variant_model_hash(base_model_hash: str, variant: str) -> str:
    """A variant's own model hash: never equal to the fp32 model's, so an fp32 index does not open
    against an fp16 model without a stated tolerance (`index_model_hash`)."""
    if variant == "fp32":
        return base_model_hash
    return hashlib.sha256(f"{base_model_hash}:{variant}".encode()).hexdigest()[:16]


def index_model_hash(manifest: dict[str, Any]) -> tuple[str, str | None]:
    """The model hash an index must carry to be served with this (served) manifest, and why it is
    not the manifest's own hash (None when it is).

    A non-fp32 variant accepts the fp32 model's index only when the manifest holds a fidelity record
    for that variant, measured against that fp32 model, that passed its stated tolerance."""
    own = str(manifest["model_hash"])
    variant, base = manifest.get("variant", "fp32"), manifest.get("base_model_hash")
    record = (manifest.get("fidelity") or {}).get(variant)
    if variant == "fp32" or not base or not isinstance(record, dict):
        return own, None
    if record.get("base_model_hash") != base or not record.get("passed"):
        return own, None
    return str(base), (f"{variant} model {own} serves the index of fp32 model {base}: fidelity gate passed "
                       f"(min cosine {record.get('min_cosine')}, Recall@10 delta {record.get('recall_at_10_delta_pt')} pt "
                       f"<= {record.get('max_recall_delta_pt')} pt on {record.get('catalog')})")
