"""Which calibration, fusion weights and per-query-type ranking an index is served with.

In order:
1. Files the user supplied (``--fusion-weights`` / ``--calibration``): applied as given, every
   query type fused; a signal whose pair the calibration lacks fuses as its raw cosine.
2. The fit the served model's manifest carries, only where it is bound to this model AND this
   catalog (``ranking.policy.binding_mismatch``); anywhere else it is not applied and the reason
   goes into the build log and the bundle.
3. Otherwise the catalog's own self-checked fit (``self_check``): fused per query type only where
   it beat the best raw signal on held-out pseudo-queries, else that raw signal ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.core.manifest import Manifest
from lenscope.client.index.pseudo_queries import ProductView, catalog_fingerprint, views_from_rows
from lenscope.client.index.self_check import CatalogVectors, self_check
from lenscope.client.index.writer import Assembled
from lenscope.client.ranking.calibration import CalibrationSet, parse_calibration
from lenscope.client.ranking.fusion import FusionWeights, parse_weights
from lenscope.client.ranking.policy import FitBinding, RankingPolicy, binding_mismatch, fused_everywhere


@dataclass(frozen=True)
class RankingSetup:
    fusion: FusionWeights
    calibration: CalibrationSet | None
    policy: RankingPolicy
    info: dict[str, Any] = field(default_factory=dict)  # for index_info.json["ranking"] and the log


def shipped_fit(manifest: dict) -> tuple[FusionWeights, CalibrationSet, FitBinding | None, str] | None:
    """The fit the served model's manifest carries and what it is bound to (None: unbound)."""
    fit = manifest.get("ranking_fit")
    if not fit:
        return None
    source = fit.get("source", "manifest")
    model_hash, fingerprint = fit.get("model_hash"), fit.get("catalog_fingerprint")
    binding = FitBinding(model_hash=model_hash, catalog_fingerprint=fingerprint) if model_hash and fingerprint else None
    return (parse_weights(fit["fusion"], f"in the served manifest ({source})"),
            parse_calibration(fit["calibration"], f"calibration in the served manifest ({source})"), binding, source)


def trained_heads(manifest: dict) -> dict[str, tuple[str, ...]] | None:
    """The model's attribute labels when its heads are trained (the engine's ``attributes`` signal
    exists only then: untrained heads are noise), else None."""
    try:
        m = Manifest.model_validate(manifest)
    except ValueError:
        return None
    return dict(m.labels) if m.heads_trained and m.labels else None


def views_and_vectors(a: Assembled) -> tuple[list[ProductView], CatalogVectors, dict[str, np.ndarray]]:
    """The neutral product views of the indexed rows, their vectors, and the extra-photo vectors
    the build already has (by catalog path), so the self-check does not embed them twice."""
    views = views_from_rows(a.rows)
    pop = np.array([s.row.popularity if s.row.popularity is not None else 0.0 for s in a.rows], dtype=np.float64)
    known = {s.row.photo: a.photo[i] for i, s in enumerate(a.rows)
             if s.row.photo and np.isfinite(a.photo[i]).all()}
    return views, CatalogVectors(image=a.image.astype(np.float64), title=a.title.astype(np.float64),
                                 popularity=pop), known


def choose_ranking(a: Assembled, model_hash: str, manifest: dict, root: Path, embedder: Any, *,
                   fusion: FusionWeights | None, calibration: CalibrationSet | None, use_shipped_fit: bool,
                   seed: int = 0) -> RankingSetup:
    views, vectors, known = views_and_vectors(a)
    fingerprint = catalog_fingerprint(views)
    binding = FitBinding(model_hash=model_hash, catalog_fingerprint=fingerprint)
    info: dict[str, Any] = {"catalog_fingerprint": fingerprint, "model_hash": model_hash}
    if fusion is not None or calibration is not None:
        reason = "fusion weights / calibration files supplied to the build: applied as given, not checked"
        info.update(source="supplied files", note=reason)
        return RankingSetup(fusion or FusionWeights(), calibration, fused_everywhere("supplied files", reason), info)
    shipped = shipped_fit(manifest) if use_shipped_fit else None
    if shipped is not None:
        s_fusion, s_cal, s_binding, source = shipped
        why = binding_mismatch(s_binding, model_hash, fingerprint)
        if why is None:
            reason = f"the model's shipped fit ({source}) was fitted on this model and this catalog"
            info.update(source="bound fit", note=reason)
            return RankingSetup(s_fusion, s_cal, fused_everywhere("bound fit", reason, s_binding), info)
        info["shipped_fit"] = {"source": source, "applied": False, "reason": why}
    check = self_check(views, vectors, embedder, root, binding=binding, known_images=known, seed=seed,
                       notes={"shipped_fit": info["shipped_fit"]["reason"]} if "shipped_fit" in info else None,
                       heads=trained_heads(manifest))
    info.update(source="self-check", self_check=check.summary,
                decisions={t: d.model_dump() for t, d in check.policy.decisions.items()})
    return RankingSetup(check.weights or FusionWeights(), check.calibration, check.policy, info)
