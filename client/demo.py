"""`lenscope demo`: the whole serving path on the embedded default model, no GPU, no network.

Export (if needed) -> start the real tritonserver -> embed images and texts through the ensembles
over gRPC -> print the image/text similarity matrix and predicted attributes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from lenscope.client import contract
from lenscope.client.manifest import load_manifest
from lenscope.client.triton import ClientConfig, TritonEmbedder
from lenscope.client.tritonserver import start_server

DEMO_ITEMS = [
    ("red", (200, 30, 40), "circle"),
    ("blue", (30, 60, 200), "square"),
    ("yellow", (235, 210, 40), "triangle"),
    ("green", (40, 160, 60), "circle"),
]
DEMO_TEXTS = ["a red t-shirt", "a blue handbag", "yellow sneakers", "green floral dress"]


def demo_image(rgb: tuple[int, int, int], shape: str, size: int = 128) -> bytes:
    img = Image.new("RGB", (size, size), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def ensure_repository(repository: Path, reexport: bool, console: Console) -> None:
    if reexport or not (repository / contract.MANIFEST_FILE).is_file():
        from lenscope.export.pipeline import export_model  # torch only when exporting

        export_model(out=repository, log=console.print)


def run_demo(repository: Path, reexport: bool = False, console: Console | None = None) -> dict:
    console = console or Console()
    t0 = time.perf_counter()
    ensure_repository(repository, reexport, console)
    manifest = load_manifest(repository)
    console.print(f"[bold]model[/] {manifest.spec.name} hash {manifest.model_hash} weights={manifest.weights}")
    log_path = repository.parent / "tritonserver.log"
    with start_server(repository, log_path=log_path) as server:
        console.print(f"[bold]tritonserver[/] ready: grpc {server.grpc_url}, metrics {server.metrics_url} (log {log_path})")
        with TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=10.0)) as client:
            served = client.manifest()
            if served["model_hash"] != manifest.model_hash:
                raise RuntimeError(f"server runs model {served['model_hash']}, expected {manifest.model_hash}")
            images = [demo_image(rgb, shape) for _, rgb, shape in DEMO_ITEMS]
            t_img = time.perf_counter()
            img_res = client.embed_images(images)
            t_txt = time.perf_counter()
            txt_res = client.embed_texts(DEMO_TEXTS)
            t_end = time.perf_counter()
    for r in [*img_res, *txt_res]:
        if not r.ok:
            raise RuntimeError(f"embedding failed: {r.error}")
    img_emb = np.stack([r.embedding for r in img_res])
    txt_emb = np.stack([r.embedding for r in txt_res])
    sims = img_emb @ txt_emb.T

    table = Table(title="cosine similarity: image (rows) x text (columns), served by tritonserver over gRPC")
    table.add_column("image")
    for t in DEMO_TEXTS:
        table.add_column(t, justify="right")
    for (name, _, shape), row in zip(DEMO_ITEMS, sims):
        table.add_row(f"{name} {shape}", *(f"{v:+.3f}" for v in row))
    console.print(table)

    labels = manifest.labels
    attrs = Table(title="attribute heads (top label, probability)")
    attrs.add_column("image")
    for a in labels:
        attrs.add_column(a)
    for (name, _, shape), r in zip(DEMO_ITEMS, img_res):
        cells = []
        for a, labs in labels.items():
            p = r.attributes[contract.attribute_output(a)]
            cells.append(f"{labs[int(np.argmax(p))]} ({p.max():.2f})")
        attrs.add_row(f"{name} {shape}", *cells)
    console.print(attrs)
    console.print(
        f"embedding dim {img_emb.shape[1]}; {len(images)} images in {1000 * (t_txt - t_img):.1f} ms, "
        f"{len(DEMO_TEXTS)} texts in {1000 * (t_end - t_txt):.1f} ms; demo total {time.perf_counter() - t0:.1f} s"
    )
    return {"similarity": sims, "image_embeddings": img_emb, "text_embeddings": txt_emb}
