"""The evaluation's configuration, constants and error: what every step of the harness reads, kept
apart so that no step imports another just for a name.

Also the two things a caller hands in from the torch side (``Exporter``, ``TorchRanker``):
``lenscope.client`` never imports torch or ``lenscope.export``, so the composition roots
(``cli/eval.py``, ``benchmarks/relevance.py``, the tests) pass ``lenscope.export``'s in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core.manifest import Manifest
from lenscope.client.ranking.metrics import Threshold

QUERY_TYPES: tuple[str, ...] = ("image", "text", "image+text")
TYPE_LABEL = {"image": "photo -> product", "text": "text -> product", "image+text": "photo+text -> product"}
TYPE_SIGNALS = {
    "image": ("visual", "image_title"),
    "text": ("text_image", "text_title"),
    "image+text": ("visual", "image_title", "text_image", "text_title"),
}
RAW_ANN = {"image": "single:visual", "text": "single:text_image", "image+text": "single:visual"}
# Query types whose raw ANN ranking is one cosine over the whole index, so torch can reproduce it
# exactly. A photo+text query's candidate pool merges both query vectors' ANN results, so its
# "single:visual" ranking is not a pure cosine ranking: reported, not part of the verdict.
FIDELITY_TYPES = ("image", "text")
COMBINED_VARIANTS: tuple[str, ...] = ("raw_sum", "calibrated", "fused_no_heads", "fused", "served")
CURVE_VARIANTS: tuple[str, ...] = ("raw_ann", "calibrated", "fused_no_heads", "fused")
CURVE_KS: tuple[int, ...] = tuple(range(1, 51))
TOP_K = 100  # the most hits a SearchQuery may ask for: MRR is MRR@100

Log = Callable[[str], None]
CalibrationMethod = Literal["platt", "isotonic"]


class EvaluationError(RuntimeError):
    """The evaluation cannot run with these inputs; the message says which and why."""


class Exporter(Protocol):
    """Exports a model spec into a Triton model repository (``lenscope.export.pipeline.export_model``)."""

    def __call__(self, spec_path: Path, out: Path, *, log: Log) -> Any: ...


@dataclass(frozen=True)
class TorchRanker:
    """The torch side of the export-fidelity check (``lenscope.export.fidelity.TORCH_RANKER``).

    ``find_spec(config, manifest)``: the spec whose torch model the repository was exported from,
    or None, and why. ``rankings(spec_path, product_ids, catalog, qset, queries, k)``: query_id ->
    top-k product ids by cosine, every embedding from the torch model in-process.
    """

    find_spec: Callable[[EvalConfig, Manifest], tuple[Path | None, str]]
    rankings: Callable[[Path, Sequence[str], Catalog, QuerySet, Sequence[Query], int], dict[str, list[str]]]


@dataclass(frozen=True)
class EvalConfig:
    catalog: Path
    workdir: Path
    queries: Path | None = None  # default: queries.jsonl next to the catalog
    split: str = "test"  # "train" | "val" | "test" | "all" (queries without a split, whole catalog)
    repository: Path | None = None  # a model repository; or
    spec: Path | None = None  # a spec, exported into <workdir>/repository (and used for fidelity)
    fusion: Path | None = None  # fusion weights file
    calibration: Path | None = None  # calibration file
    use_shipped: bool = True  # the files shipped next to the model's checkpoint, if any
    fit_split: str | None = "val"  # fit calibration + weights on this split's queries when no file is given
    variants: tuple[str, ...] = ("single", *COMBINED_VARIANTS)
    min_grade: Threshold = "max"  # relevant for R@K / MRR: the query's top grade (exact-product variant)
    graded_min_grade: Threshold = 2  # for the recall fraction column
    max_queries_per_type: int | None = None  # subsample (seeded) for quick runs
    fidelity: bool = True
    fidelity_tolerance_points: float = 0.2
    plots: bool = True
    triton_ready_timeout_s: float = 180.0
    index_batch_size: int = 32
    index_concurrency: int = 2
    seed: int = 0
    allow_outside_images: bool = False  # catalog images outside the catalog's folder (as `index build`)
    exporter: Exporter | None = field(default=None, compare=False)  # exports `spec` when no repository is given
    torch_ranker: TorchRanker | None = field(default=None, compare=False)  # torch side of the fidelity check
