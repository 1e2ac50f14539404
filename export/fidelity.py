"""The torch side of the evaluation harness's export-fidelity check: the same products and queries
embedded by the torch model in-process and ranked by cosine, and the spec that model comes from.

Here, not in ``lenscope.client.eval``, because it needs torch (imported when ranking); the harness
receives it as ``TORCH_RANKER`` through ``EvalConfig.torch_ranker``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core.manifest import Manifest
from lenscope.client.eval.config import EvalConfig, TorchRanker
from lenscope.client.eval.queries import query_image
from lenscope.client.inputs.image_files import read_catalog_image


def torch_rankings(spec_path: Path, product_ids: Sequence[str], catalog: Catalog, qset: QuerySet,
                   queries: Sequence[Query], k: int = 10) -> dict[str, list[str]]:
    """query_id -> top-k product ids by cosine, every embedding from the torch model in-process."""
    import torch

    from lenscope.client.core.modelspec import load_spec
    from lenscope.client.inputs.preprocess import preprocess_bytes
    from lenscope.export.model import build_model, open_clip_tokenize

    spec = load_spec(spec_path)
    model = build_model(spec, Path(spec_path).parent)
    image_tower, text_tower, _ = model.towers()

    def images(blobs: list[bytes]) -> torch.Tensor:
        out = []
        for i in range(0, len(blobs), 256):
            x = torch.stack([torch.from_numpy(preprocess_bytes(b, spec.preprocess, spec.limits))
                             for b in blobs[i:i + 256]])
            with torch.no_grad():
                out.append(image_tower(x).float())
        return torch.cat(out) if out else torch.zeros((0, spec.embed_dim))

    def texts(items: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(items), 512):
            with torch.no_grad():
                out.append(text_tower(open_clip_tokenize(spec, items[i:i + 512])).float())
        return torch.cat(out) if out else torch.zeros((0, spec.embed_dim))

    keys = images([read_catalog_image(catalog.root, catalog.get(pid).image, max_bytes=spec.limits.max_image_bytes,
                                      allow_outside=qset.allow_outside_images) for pid in product_ids])
    img_q = [q for q in queries if q.type in ("image", "image+text")]
    txt_q = [q for q in queries if q.type == "text"]
    ranked: dict[str, list[str]] = {}
    for qs, emb in ((img_q, lambda: images([query_image(qset, q) or b"" for q in img_q])),
                    (txt_q, lambda: texts([q.text or "" for q in txt_q]))):
        if not qs:
            continue
        sims = emb() @ keys.T
        top = torch.topk(sims, min(k, len(product_ids)), dim=1).indices.numpy()
        for q, row in zip(qs, top):
            ranked[q.query_id] = [product_ids[j] for j in row]
    return ranked


def fidelity_spec(config: EvalConfig, manifest: Manifest) -> tuple[Path | None, str]:
    """The spec whose torch model the repository was exported from, or why there is none."""
    if config.spec is not None:
        return Path(config.spec), "the spec the repository was exported from"
    from lenscope.client.core.modelspec import load_spec, resolve_checkpoint

    default = Path(__file__).parent / "specs" / "lenscope-tiny.json"
    if not default.is_file() or manifest.checkpoint is None:
        return None, "no spec given and the repository is not the shipped default"
    spec = load_spec(default)
    ckpt = resolve_checkpoint(spec, default.parent)
    if ckpt is None or hashlib.sha256(ckpt.read_bytes()).hexdigest() != manifest.checkpoint.sha256:
        return None, "no spec given and the repository's checkpoint is not the shipped default's"
    return default, "the shipped default spec (checkpoint sha256 matches the manifest)"


TORCH_RANKER = TorchRanker(find_spec=fidelity_spec, rankings=torch_rankings)
