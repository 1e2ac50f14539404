"""``<stem>.binding.json``: what a fit (``<stem>.fusion.json`` + ``<stem>.calibration.json``) was
fitted on, written by ``lenscope rerank fit`` beside the weights file.

The export reads it (``export/pipeline.py``: ``ranking_fit_beside``) into the manifest's
``ranking_fit``, and the index build applies that fit only to an index of the same model AND the
same catalog (``policy.binding_mismatch``); without this file a shipped fit applies nowhere. The
catalog fingerprint is the one ``lenscope index inspect`` shows and the index build computes from the
rows it indexes (``index.pseudo_queries.catalog_fingerprint``): products, titles and attributes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lenscope.client.core.durable_files import atomic_write_text

FUSION_SUFFIX = ".fusion.json"
BINDING_SUFFIX = ".binding.json"


class BindingFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    model_hash: str = Field(min_length=1)
    catalog_fingerprint: str = Field(min_length=1)
    catalog: str = ""  # the catalog file the fit was made on (for people; the fingerprint decides)
    products: int = Field(0, ge=0)
    fitted_on_split: str = ""


def binding_path_for(fusion_out: Path) -> Path:
    """``x.fusion.json`` -> ``x.binding.json`` (the name the export looks for beside a checkpoint
    ``x.pt``); any other name ``y.json`` -> ``y.binding.json``."""
    name = fusion_out.name
    stem = name[: -len(FUSION_SUFFIX)] if name.endswith(FUSION_SUFFIX) else Path(name).stem
    return fusion_out.with_name(stem + BINDING_SUFFIX)


def save_binding(binding: BindingFile, path: Path) -> None:
    atomic_write_text(path, binding.model_dump_json(indent=2) + "\n")


def load_binding(path: Path) -> BindingFile:
    return BindingFile.model_validate_json(Path(path).read_text(encoding="utf-8"))
