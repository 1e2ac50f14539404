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
