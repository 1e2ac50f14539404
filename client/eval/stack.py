"""The live stack an evaluation runs through: a model repository (given, or a spec exported by the
caller's ``Exporter``) served by a real ``tritonserver``, an index of each split built through it,
and a ``SearchEngine`` over each index whose embedder answers prefetched queries from memory."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest, load_manifest
from lenscope.client.eval.config import TOP_K, EvalConfig, EvaluationError, Log


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


class PrefetchedEmbedder:
    """The engine's embedder, answering from embeddings fetched through Triton beforehand.

    ``prefetch`` embeds many inputs with one concurrent fan-out (Triton batches them); ``embed_*``
    return the stored ``EmbedResult`` of an input seen before and forward anything else to Triton.
    Server state (``manifest``, ``is_ready``) always goes to Triton.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self._images: dict[bytes, Any] = {}
        self._texts: dict[str, Any] = {}

    def prefetch(self, images: Sequence[bytes] = (), texts: Sequence[str] = (), timeout_s: float = 60.0,
                 chunk: int = 256) -> None:
        todo_i = list({_sha1(b): b for b in images if _sha1(b) not in self._images}.items())
        for i in range(0, len(todo_i), chunk):
            part = todo_i[i:i + chunk]
            for (key, _), res in zip(part, self.inner.embed_images([b for _, b in part], timeout_s)):
                if not res.ok:
                    raise EvaluationError(f"Triton could not embed a query image: {res.error}")
                self._images[key] = res
        todo_t = sorted({t for t in texts if t not in self._texts})
        for i in range(0, len(todo_t), chunk):
            part = todo_t[i:i + chunk]
            for text, res in zip(part, self.inner.embed_texts(part, timeout_s)):
                if not res.ok:
                    raise EvaluationError(f"Triton could not embed query text {text!r}: {res.error}")
                self._texts[text] = res

    def image_result(self, image: bytes) -> Any | None:
        return self._images.get(_sha1(image))

    def embed_images(self, images: list[bytes], timeout_s: float | None = None) -> list[Any]:
        hits = [self._images.get(_sha1(b)) for b in images]
        if all(h is not None for h in hits):
            return hits
        return self.inner.embed_images(images, timeout_s)

    def embed_texts(self, texts: list[str], timeout_s: float | None = None) -> list[Any]:
        hits = [self._texts.get(t) for t in texts]
        if all(h is not None for h in hits):
            return hits
        return self.inner.embed_texts(texts, timeout_s)

    def embed_image_and_text(self, image: bytes, text: str, timeout_s: float | None = None) -> tuple[Any, Any]:
        image_r = self.image_result(image)
        text_r = self._texts.get(text)
        if image_r is not None and text_r is not None:
            return image_r, text_r
        return self.inner.embed_image_and_text(image, text, timeout_s)

    def manifest(self) -> dict:
        return self.inner.manifest()

    def is_ready(self) -> bool:
        return self.inner.is_ready()

    def attribute_outputs(self) -> list[str]:
        return self.inner.attribute_outputs()

    def close(self) -> None:
        self.inner.close()


@dataclass
class SplitIndex:
    """One split of the catalog indexed through Triton, with a search engine over it."""

    split: str
    index_root: Path
    engine: Any  # SearchEngine
    embedder: PrefetchedEmbedder
    build_seconds: float
    indexed: int


@dataclass
class LiveStack:
    repository: Path
    manifest: Manifest
    server: Any  # TritonServer
    workdir: Path
    catalog: Path
    log: Log
    indexes: dict[str, SplitIndex] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config: EvalConfig | None = None

    def index(self, split: str, fusion_weights: Path | None = None) -> SplitIndex:
        """Build (once) an index of ``split`` through Triton and open a search engine over it."""
        if split in self.indexes:
            return self.indexes[split]
        from lenscope.client.index.job import IndexBuildConfig, build_index
        from lenscope.client.search.engine import SearchSettings, open_engine
        from lenscope.client.triton.client import ClientConfig, TritonEmbedder

        cfg = self.config
        root = self.workdir / f"index-{split}"
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        batch = cfg.index_batch_size if cfg else 32
        conc = cfg.index_concurrency if cfg else 2
        with TritonEmbedder(ClientConfig(url=self.server.grpc_url, timeout_s=60.0,
                                         max_concurrency=min(64, batch * conc))) as emb:
            report = build_index(IndexBuildConfig(
                catalog=self.catalog, index_root=root, splits=None if split == "all" else (split,),
                batch_size=batch, concurrency=conc, fusion_weights=fusion_weights, progress=False,
                allow_outside_images=bool(cfg and cfg.allow_outside_images)), emb)
        seconds = time.perf_counter() - t0
        self.log(f"indexed {report.indexed} products of split {split!r} through Triton in {seconds:.1f} s "
                 f"({report.rejected} rejected)")
        engine = open_engine(self.server.grpc_url, str(root), SearchSettings(
            rerank_depth=TOP_K, default_deadline_s=60.0, recall_sample_rate=0.0, model_check_interval_s=3600.0),
            triton_timeout_s=60.0)
        embedder = PrefetchedEmbedder(engine.embedder)
        engine.embedder = embedder
        self.indexes[split] = SplitIndex(split, root, engine, embedder, seconds, report.indexed)
        return self.indexes[split]

    def close(self) -> None:
        for ix in self.indexes.values():
            ix.engine.close()
            ix.embedder.close()
        self.indexes.clear()


def resolve_repository(config: EvalConfig, log: Log) -> Path:
    """The repository to serve: the given one, or the spec exported into the workdir."""
    if config.repository is not None:
        if not (config.repository / contract.MANIFEST_FILE).is_file():
            raise EvaluationError(f"{config.repository} is not a model repository (no {contract.MANIFEST_FILE})")
        return config.repository
    if config.spec is None:
        raise EvaluationError("give a model repository or a model spec to export")
    if config.exporter is None:
        raise EvaluationError(f"{config.spec} must be exported and no exporter was given "
                              "(lenscope.export.pipeline.export_model, which needs torch)")

    out = config.workdir / "repository"
    if out.exists():
        shutil.rmtree(out)
    config.exporter(Path(config.spec), out, log=log)
    return out


@contextmanager
def live_stack(config: EvalConfig, log: Log = print) -> Iterator[LiveStack]:
    from lenscope.client.triton.server import start_server

    config.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    repository = resolve_repository(config, log)
    t1 = time.perf_counter()
    manifest = load_manifest(repository)
    log(f"starting tritonserver on {repository} (model {manifest.spec.name}, hash {manifest.model_hash})")
    server = start_server(repository, log_path=config.workdir / "tritonserver.log",
                          ready_timeout=config.triton_ready_timeout_s)
    stack = LiveStack(repository, manifest, server, config.workdir, config.catalog, log, config=config)
    stack.timings.update({"export_s": round(t1 - t0, 1), "triton_start_s": round(time.perf_counter() - t1, 1)})
    try:
        yield stack
    finally:
        stack.close()
        code = server.stop()
        if code not in (0, None):
            log(f"tritonserver exited {code}; log tail:\n{server.log_tail(20)}")
