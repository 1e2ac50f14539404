"""The fp16 fidelity gate: a reduced-precision variant of the encoders against the fp32 ONNX graphs
on a catalog, before an index built from fp32 embeddings is served by it.

Both sides embed the same catalog images and the same queries; the gate reports the per-row cosine
between fp32 and variant embeddings and the Recall@10 of each side's rankings, and passes when the
Recall@10 loss is at most MAX_RECALL_DELTA_PT percentage points and every row's cosine is at least
MIN_COSINE. The record is written into the export manifest beside the graphs (`fidelity[variant]`),
which is what lets a variant's repository serve the fp32 index (client/core/manifest.py,
`index_model_hash`).

On CPU the variant is the fp16-converted ONNX graph (onnxconverter-common, fp32 inputs and outputs
kept) under onnxruntime's CPU provider. On a GPU the same gate runs the TensorRT variant
(benchmarks/gpu_check.py). No torch here: the catalog is read, preprocessed and tokenised by the
client's own code, as the serving stack does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lenscope.client.core import contract
from lenscope.client.core.manifest import FidelityRecord, Manifest, load_manifest
from lenscope.client.ranking.metrics import recall_at_k

MAX_RECALL_DELTA_PT = 0.2
MIN_COSINE = 0.999
K = 10


def fp16_graph(src: Path, dst: Path) -> Path:
    """The graph with fp16 weights and arithmetic, fp32 at its inputs and outputs (so the serving
    contract is unchanged)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    # The exported graphs' own Cast-to-float nodes stay fp32 (converted, they are typed inconsistently
    # and onnxruntime refuses the graph); every other op computes in fp16.
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings():  # "float32 number ... will be truncated": what fp16 means
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    onnx.save(model, str(dst))
    return dst


def _session(path: Path, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    if not optimize:  # onnxruntime 1.32's CPU graph fusions crash (SIGSEGV) on these fp16 graphs
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, name: str, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [sess.run([contract.EMBEDDING], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.sum(a64 * b64, axis=1) / np.maximum(den, 1e-30)


def _recall(queries: np.ndarray, keys: np.ndarray, ids: Sequence[str], relevance: Sequence[dict[str, int]]) -> float:
    if not len(queries):
        return 0.0
    top = np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :K]
    return float(np.mean([recall_at_k([ids[j] for j in row], rel, K) for row, rel in zip(top, relevance)]))


def measure(onnx_dir: Path, catalog_path: Path, queries_path: Path | None = None, variant: str = "fp16",
            max_products: int | None = None, log: Callable[[str], None] = print) -> FidelityRecord:
    """Embed the catalog (and its queries, held-out split when it has one) with fp32 and the variant."""
    from lenscope.client.catalog.reader import read_catalog, read_queries
    from lenscope.client.eval.queries import query_image
    from lenscope.client.inputs.image_files import read_catalog_image
    from lenscope.client.inputs.preprocess import preprocess_bytes
    from lenscope.client.inputs.tokenizer import ClipTokenizer

    if variant != "fp16":
        raise ValueError(f"variant {variant!r}: on this machine only 'fp16' (an onnxruntime graph) can be measured; "
                         "TensorRT variants are measured on a GPU by benchmarks/gpu_check.py")
    onnx_dir = Path(onnx_dir)
    manifest = load_manifest(onnx_dir)
    spec = manifest.spec
    catalog = read_catalog(catalog_path)
    rows = list(catalog)[:max_products] if max_products else list(catalog)
    ids = [r.product_id for r in rows]
    qpath = queries_path or Path(catalog_path).with_name("queries.jsonl")
    qset = read_queries(qpath, catalog) if Path(qpath).is_file() else None
    queries = []
    if qset is not None:
        known = set(ids)
        allq = [q for q in qset if any(pid in known for pid in q.relevance)]
        held_out = [q for q in allq if q.split == "test"]
        queries = held_out or allq
    pixels = np.stack([preprocess_bytes(read_catalog_image(catalog.root, r.image, max_bytes=spec.limits.max_image_bytes,
                                                           allow_outside=True), spec.preprocess, spec.limits)
                       for r in rows]).astype(np.float32)
    text_q = [q for q in queries if q.type == "text" and q.text]
    image_q = [q for q in queries if q.type in ("image", "image+text") and q.image]
    tok = ClipTokenizer(onnx_dir / contract.BPE_VOCAB_FILE, spec.context_length)
    ids_in = np.stack([tok.encode(q.text) for q in text_q]).astype(np.int64) if text_q else None
    q_pixels = (np.stack([preprocess_bytes(query_image(qset, q), spec.preprocess, spec.limits) for q in image_q])
                .astype(np.float32) if image_q else None)
    log(f"fidelity: {len(rows)} products, {len(text_q)} text + {len(image_q)} image queries")

    with tempfile.TemporaryDirectory(prefix="lenscope-fp16-") as tmp:
        graphs = {"fp32": (onnx_dir / contract.IMAGE_ONNX, onnx_dir / contract.TEXT_ONNX)}
        graphs["variant"] = tuple(fp16_graph(p, Path(tmp) / p.name) for p in graphs["fp32"])
        emb: dict[str, dict[str, np.ndarray]] = {}
        for side, (img_path, txt_path) in graphs.items():
            img, txt = _session(img_path, side == "fp32"), _session(txt_path, side == "fp32")
            emb[side] = {"keys": _run(img, contract.PIXEL_VALUES, pixels)}
            emb[side]["text"] = _run(txt, contract.INPUT_IDS, ids_in) if ids_in is not None else np.zeros((0, 1))
            emb[side]["image"] = _run(img, contract.PIXEL_VALUES, q_pixels) if q_pixels is not None else np.zeros((0, 1))
    cos = np.concatenate([row_cosines(emb["fp32"][k], emb["variant"][k]) for k in ("keys", "text", "image")
                          if len(emb["fp32"][k])])
    rel = [q.relevance for q in text_q] + [q.relevance for q in image_q]

    def recall(side: str) -> float:
        e = emb[side]
        parts = [x for x in (e["text"], e["image"]) if len(x)]
        return _recall(np.concatenate(parts), e["keys"], ids, rel) if parts else 0.0

    r32, rv = recall("fp32"), recall("variant")
    delta = round(100.0 * (r32 - rv), 4)
    min_cos = float(cos.min())
    return FidelityRecord(
        variant="fp16", base_model_hash=manifest.model_hash, catalog=str(catalog_path), n_products=len(rows),
        n_queries=len(rel), min_cosine=round(min_cos, 9), mean_cosine=round(float(cos.mean()), 9),
        recall_at_10_fp32=round(r32, 4), recall_at_10_variant=round(rv, 4), recall_at_10_delta_pt=delta,
        max_recall_delta_pt=MAX_RECALL_DELTA_PT, min_cosine_bound=MIN_COSINE,
        passed=delta <= MAX_RECALL_DELTA_PT and min_cos >= MIN_COSINE,
        runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider (onnxconverter-common fp16 graph)",
    )


def record(onnx_dir: Path, rec: FidelityRecord) -> Manifest:
    """Write the record into the export manifest beside the graphs (a file the export wrote)."""
    path = Path(onnx_dir) / contract.MANIFEST_FILE
    manifest = load_manifest(path)
    updated = manifest.model_copy(update={"fidelity": {**manifest.fidelity, rec.variant: rec}})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(updated.to_json() + "\n", encoding="utf-8")
    tmp.replace(path)
    return updated
