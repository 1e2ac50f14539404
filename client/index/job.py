"""The indexing job: reader -> embedder -> writer, resumable, with progress and an accounted summary.

    catalog.jsonl|csv --scan_catalog--> rows (+ bad-row rejects)              index_reader.py
        --chunks of rows, `concurrency` in flight--> ChunkEmbedder            index_embedder.py
        --each finished chunk--> checkpoint (atomic .npz)                     index_checkpoint.py
        --all chunks--> assemble -> FAISS + metadata + attachments -> publish index_writer.py

The three stages only meet in this module, so each can be swapped (object store reader, another
model server, a Milvus writer). Every row ends up indexed or in the rejects file with a reason;
the counts are checked to add up before anything is published.

Resumability: chunks are checkpointed as they finish; a job that is killed, or stopped because
the model server stayed unavailable (`IndexBuildInterrupted`), is resumed by running the same
command again: finished chunks are loaded instead of embedded, and the bundle is bit-identical to
an uninterrupted build (row ids and rejects are fixed by the catalog and the checkpointed outcomes).

Test hook: with LENSCOPE_TEST_KILL_AFTER_CHUNKS=N in the environment the process SIGKILLs itself
right after checkpointing its N-th chunk (how the tests interrupt a build at chosen points).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from lenscope.client.core.outputs import check_output_file
from lenscope.client.index.checkpoint import WorkDir, atomic_write
from lenscope.client.index.embedder import (
    TRANSIENT_STATUSES,
    ChunkEmbedder,
    EmbeddedChunk,
    Embedder,
    EmbedderUnavailable,
    ModelInfo,
    RetryPolicy,
)
from lenscope.client.index.file_digests import FileDigests
from lenscope.client.index.incremental import (DEFAULT_REFIT_FRACTION, load_previous, plan, previous_ranking,
                                               reused_chunk, row_keys, should_refit)
from lenscope.client.index.reader import CatalogScan, Reject, SourceRow, fingerprint, scan_catalog
from lenscope.client.index.ranking_setup import choose_ranking
from lenscope.client.index.writer import IndexKind, WriterSettings, assemble, rejects_jsonl, write_bundle
from lenscope.client.ranking.calibration import load_calibration
from lenscope.client.ranking.fusion import load_weights

KILL_HOOK_ENV = "LENSCOPE_TEST_KILL_AFTER_CHUNKS"
DEFAULT_REJECTS = "rejects.jsonl"


class IndexBuildInterrupted(RuntimeError):
    """The job stopped before publishing; what was embedded is checkpointed and a rerun resumes."""

    def __init__(self, message: str, work_dir: Path | None, done: int, total: int):
        self.work_dir = work_dir
        self.done = done
        self.total = total
        where = f"; {done} of {total} chunks are checkpointed in {work_dir}" if work_dir else ""
        super().__init__(f"{message}{where}. Run the same command again to resume.")


@dataclass(frozen=True)
class IndexBuildConfig:
    catalog: Path
    index_root: Path
    index_kind: IndexKind = "auto"
    batch_size: int = 32  # rows per chunk: one embed call per modality, one checkpoint file
    concurrency: int = 4  # chunks in flight
    rejects_path: Path | None = None  # default: <index_root>/rejects.jsonl
    fusion_weights: Path | None = None  # supplied: applied as given (see index/ranking_setup.py)
    calibration: Path | None = None  # supplied: applied as given; default: the catalog's self-checked fit
    # Consider the fit the served model's manifest carries, when neither file is given; it is
    # applied only if it is bound to this model and this catalog.
    use_shipped_fit: bool = False
    calibration_method: Literal["platt", "isotonic"] = "platt"
    splits: tuple[str, ...] | None = None  # index only these catalog splits
    seed: int = 0  # unmatched-pair sampling for the calibration fit
    progress: bool = True  # rich progress bar (only drawn on a terminal)
    keep_work: bool = False  # keep the checkpoints after publishing
    allow_outside_images: bool = False  # read image paths that are absolute or lead outside the catalog's folder
    full: bool = False  # embed every row even when the served version's vectors could be reused
    refit_fraction: float = DEFAULT_REFIT_FRACTION  # incremental: refit the ranking above this share of moved rows
    vector_backend: Literal["faiss", "milvus"] = "faiss"  # milvus: a new collection per build (writer.py)
    milvus_uri: str | None = None
    milvus_alias: str = "lenscope_serving"


@dataclass
class BuildReport:
    bundle_id: str
    bundle_path: Path
    model_hash: str
    catalog_sha256: str
    rows_read: int
    indexed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    photos_skipped_by_reason: dict[str, int]
    skipped_other_splits: int
    chunks_total: int
    chunks_resumed: int
    chunks_embedded: int
    seconds: dict[str, float]
    rows_per_s: float  # rows embedded by this run / embedding time
    rejects_path: Path
    info: dict[str, Any] = field(repr=False, default_factory=dict)


def build_index(config: IndexBuildConfig, embedder: Embedder, *, sleep: Callable[[float], None] | None = None,
                retry: RetryPolicy | None = None, log: Any = None) -> BuildReport:
    """Run the whole job; raises CatalogError (unusable file), IndexBuildInterrupted (resumable), ValueError."""
    log = log or structlog.get_logger("lenscope.index")
    if config.batch_size < 1 or config.concurrency < 1:
        raise ValueError("batch_size and concurrency must be >= 1")
    fusion_path, calibration_path = config.fusion_weights, config.calibration
    rejects_path = config.rejects_path or Path(config.index_root) / DEFAULT_REJECTS
    check_output_file(rejects_path, "--rejects", is_rejects_file, "a rejects file",
                      inputs={"--catalog": config.catalog, "--fusion-weights": fusion_path, "--calibration": calibration_path})
    fusion = load_weights(fusion_path) if fusion_path else None
    calibration = load_calibration(calibration_path) if calibration_path else None
    t0 = time.perf_counter()
    scan = scan_catalog(config.catalog, splits=config.splits)
    model = _served_model(embedder)
    t_read = time.perf_counter()
    if config.full:
        prev, why_full = None, "--full given"
    else:
        options = {"milvus": {"uri": config.milvus_uri}} if config.milvus_uri else None
        prev, why_full = load_previous(Path(config.index_root), model, index_options=options)
    seconds: dict[str, float] = {"read": round(t_read - t0, 3)}
    if prev is not None:  # opening the served version and reading its vectors back (FAISS file or Milvus)
        seconds["previous"] = round(time.perf_counter() - t_read, 3)
    if prev is None:
        log.info("index_build_full", reason=why_full)
        work = WorkDir.open(config.index_root, catalog=scan.path.resolve(), catalog_sha256=scan.sha256,
                            model_hash=model.model_hash, splits=config.splits, chunk_size=config.batch_size,
                            n_rows=len(scan.rows))
        with work:  # holds the work dir's lock until published (remove) or interrupted (close)
            t_embed0 = time.perf_counter()
            chunks, resumed, todo = _embed_all(config, scan, model, work, embedder, retry, sleep, log)
            seconds["embed"] = round(time.perf_counter() - t_embed0, 3)
            embedded_now = sum(len(work.chunk_range(k)) for k in todo)
            t_keys = time.perf_counter()
            digests = FileDigests()
            keys = row_keys(scan.root, scan.rows, model, allow_outside=config.allow_outside_images, digests=digests)
            seconds["row_keys"] = round(time.perf_counter() - t_keys, 3)
            chunk_info = {"size": work.chunk_size, "total": work.n_chunks, "resumed": resumed, "embedded": len(todo)}
            build = {"mode": "full", "reason": why_full}
            bundle_id, info, counts = _publish(config, scan, model, embedder, list(chunks.values()), keys, None, log,
                                               fusion, calibration, rejects_path, seconds, chunk_info, embedded_now,
                                               build, t0, digests)
            if not config.keep_work:
                work.remove()
        chunks_total, chunks_resumed, chunks_embedded = work.n_chunks, resumed, len(todo)
    else:
        t_keys = time.perf_counter()
        digests = FileDigests(prev.digests.known)
        keys = row_keys(scan.root, scan.rows, model, allow_outside=config.allow_outside_images, digests=digests)
        p = plan(scan.rows, keys, prev)
        seconds["row_keys"] = round(time.perf_counter() - t_keys, 3)
        p.counts["files_hashed"], p.counts["files_known"] = digests.read, digests.reused
        log.info("index_build_incremental", previous=prev.version, **p.counts)
        t_embed0 = time.perf_counter()
        embedded = _embed_rows(config, scan, model, p.embed, embedder, retry, sleep)
        seconds["embed"] = round(time.perf_counter() - t_embed0, 3)
        chunks = [reused_chunk(p, prev, scan.rows, model.embed_dim), *embedded]
        refit, why = should_refit(p, config.refit_fraction)
        kept = None if refit or fusion is not None or calibration is not None else previous_ranking(prev, why)
        if fusion is not None or calibration is not None:
            why = "supplied --fusion-weights / --calibration applied as given (no fit kept or refitted)"
        elif not refit and kept is None:
            why = f"{why}, but version {prev.version} stored no fit to keep: ranking refitted"
        n_chunks = -(-len(p.embed) // config.batch_size)
        chunk_info = {"size": config.batch_size, "total": n_chunks, "resumed": 0, "embedded": n_chunks}
        build = {"mode": "incremental", "previous": prev.version, **p.counts, "ranking": why}
        bundle_id, info, counts = _publish(config, scan, model, embedder, chunks, keys, kept, log, fusion,
                                           calibration, rejects_path, seconds, chunk_info, len(p.embed), build, t0,
                                           digests, prev.title_cells_by_key())
        chunks_total, chunks_resumed, chunks_embedded = n_chunks, 0, n_chunks

    report = BuildReport(
        bundle_id=bundle_id, bundle_path=Path(config.index_root) / "versions" / bundle_id,
        model_hash=model.model_hash, catalog_sha256=scan.sha256, rows_read=counts["rows_read"],
        indexed=counts["indexed"], rejected=counts["rejected"], rejected_by_reason=counts["rejected_by_reason"],
        photos_skipped_by_reason=counts["photos_skipped_by_reason"], skipped_other_splits=scan.skipped,
        chunks_total=chunks_total, chunks_resumed=chunks_resumed, chunks_embedded=chunks_embedded, seconds=seconds,
        rows_per_s=info["rows_per_s"] or 0.0, rejects_path=rejects_path, info=info,
    )
    log.info("index_build_done", bundle=bundle_id, model_hash=model.model_hash, rows_read=report.rows_read,
             indexed=report.indexed, rejected=report.rejected, rejected_by_reason=report.rejected_by_reason,
             photos_skipped=report.photos_skipped_by_reason, skipped_other_splits=scan.skipped,
             chunks_resumed=chunks_resumed, chunks_embedded=chunks_embedded, seconds=seconds,
             rows_per_s=report.rows_per_s, rejects_file=str(rejects_path), build=info["build"])
    return report


def _publish(config: IndexBuildConfig, scan: CatalogScan, model: ModelInfo, embedder: Embedder,
             chunks: list[EmbeddedChunk], keys: list[str], kept_ranking: Any, log: Any, fusion: Any,
             calibration: Any, rejects_path: Path, seconds: dict[str, float], chunk_info: dict[str, int],
             embedded_now: int, build: dict[str, Any], t0: float,
             digests: FileDigests | None = None,
             title_cells: tuple[Any, dict[str, int]] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Everything after embedding: check the model, assemble, choose the ranking, write the rejects, publish."""
    served_now = _served_model(embedder).model_hash
    if served_now != model.model_hash:
        raise IndexBuildInterrupted(
            f"the served model changed during the build ({model.model_hash} -> {served_now}); vectors of two "
            "models cannot share an index", None, 0, chunk_info["total"])

    a = assemble(chunks, scan.rows, model)
    position_key = {s.position: k for s, k in zip(scan.rows, keys)}
    a.keys = [position_key[s.position] for s in a.rows]
    a.file_digests = digests.dump() if digests is not None else None
    if title_cells is not None:  # reused rows keep their title cell; rows embedded anew get -1 (assigned at write)
        centroids, cell_of_key = title_cells
        a.title_cells_hint = (centroids, np.asarray([cell_of_key.get(k, -1) for k in a.keys], dtype=np.int64))
    t_fit0 = time.perf_counter()
    if kept_ranking is not None:
        ranking = kept_ranking
    else:
        ranking = (choose_ranking(a, model.model_hash, embedder.manifest(), scan.root, embedder, fusion=fusion,
                                  calibration=calibration, use_shipped_fit=config.use_shipped_fit, seed=config.seed)
                   if len(a) else None)
    seconds["ranking_fit"] = round(time.perf_counter() - t_fit0, 3)
    if ranking is not None:
        _log_ranking(log, ranking)
    all_rejects = sorted([*scan.rejects, *a.rejects], key=lambda r: (r.line, r.kept, r.reason))
    counts = _counts(scan, len(a), all_rejects)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(rejects_path, rejects_jsonl(all_rejects))

    embed_s = seconds["embed"]
    info = {
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog": {"path": str(scan.path.resolve()), "sha256": scan.sha256,
                    "splits": list(config.splits) if config.splits else None},
        "counts": counts,
        "chunks": chunk_info,
        "build": build,
        "timings_s": seconds,
        "rows_per_s": round(embedded_now / embed_s, 2) if embed_s > 0 and embedded_now else None,
    }
    t_write0 = time.perf_counter()
    settings = WriterSettings(index_kind=config.index_kind, ranking=ranking,
                              calibration_method=config.calibration_method, seed=config.seed,
                              vector_backend=config.vector_backend, milvus_uri=config.milvus_uri,
                              milvus_alias=config.milvus_alias)
    bundle_id, info = write_bundle(Path(config.index_root), a, all_rejects, model, settings, info)
    seconds["write"] = round(time.perf_counter() - t_write0, 3)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    return bundle_id, info, counts


def _embed_rows(config: IndexBuildConfig, scan: CatalogScan, model: ModelInfo, rows: list[SourceRow],
                embedder: Embedder, retry: RetryPolicy | None, sleep: Callable[[float], None] | None
                ) -> list[EmbeddedChunk]:
    """Embed the rows an incremental build could not reuse (no checkpoints: a rerun redoes only these)."""
    stage = ChunkEmbedder(embedder, model, scan.root, retry=retry, sleep=sleep,
                          allow_outside_images=config.allow_outside_images)
    spans = [rows[i:i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
    try:
        return list(_run_bounded(lambda k: stage.embed_chunk(k, spans[k]), list(range(len(spans))),
                                 config.concurrency))
    except EmbedderUnavailable as err:
        raise IndexBuildInterrupted(f"model server unavailable: {err}", None, 0, len(spans)) from err


def _embed_all(config: IndexBuildConfig, scan: CatalogScan, model: ModelInfo, work: WorkDir, embedder: Embedder,
               retry: RetryPolicy | None, sleep: Callable[[float], None] | None, log: Any
               ) -> tuple[dict[int, EmbeddedChunk], int, list[int]]:
    """Load the valid checkpoints, embed the other chunks (`concurrency` in flight), checkpoint each one.

    Returns (chunks by index, how many were resumed, the indices embedded by this run).
    """
    stage = ChunkEmbedder(embedder, model, scan.root, retry=retry, sleep=sleep,
                          allow_outside_images=config.allow_outside_images)
    attr_widths = {a: len(labels) for a, labels in model.attributes.items()}

    def rows_of(k: int):
        span = work.chunk_range(k)
        return scan.rows[span.start:span.stop]

    chunks: dict[int, EmbeddedChunk] = {}
    for k in sorted(work.done_chunks()):
        c = work.load(k, fingerprint=fingerprint(scan.root, rows_of(k)), dim=model.embed_dim, attributes=attr_widths)
        if c is not None:
            chunks[k] = c
    resumed = len(chunks)
    todo = [k for k in range(work.n_chunks) if k not in chunks]
    if resumed:
        log.info("index_build_resume", work_dir=str(work.path), chunks_resumed=resumed, chunks_left=len(todo))

    def embed(k: int) -> EmbeddedChunk:
        rows = rows_of(k)
        fp = fingerprint(scan.root, rows)  # before reading: a file replaced meanwhile is caught next time
        chunk = stage.embed_chunk(k, rows)
        chunk.fingerprint = fp
        return chunk

    kill_after = int(os.environ.get(KILL_HOOK_ENV, "0") or 0)
    saved = 0
    with _Progress(config.progress, len(scan.rows), done=sum(len(rows_of(k)) for k in chunks)) as bar:
        try:
            for chunk in _run_bounded(embed, todo, config.concurrency):
                work.save(chunk)
                chunks[chunk.index] = chunk
                saved += 1
                work.write_state(done=len(chunks))
                bar.advance(len(rows_of(chunk.index)))
                if kill_after and saved == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        except EmbedderUnavailable as err:
            raise IndexBuildInterrupted(f"model server unavailable: {err}", work.path, len(chunks),
                                        work.n_chunks) from err
    return chunks, resumed, todo


def _log_ranking(log: Any, ranking: Any) -> None:
    """Say in the build log which fit the index is served with, and why (do no harm, say what you did)."""
    shipped = ranking.info.get("shipped_fit")
    if shipped:
        log.warning("shipped_fit_not_applied", source=shipped["source"], reason=shipped["reason"])
    decisions = {t: f"{d.ranked_by} (rule {d.rule or '-'}: {d.reason})" for t, d in ranking.policy.decisions.items()}
    log.info("ranking_fit", source=ranking.policy.source, catalog_fingerprint=ranking.info.get("catalog_fingerprint"),
             calibrated_pairs=sorted(ranking.calibration.pairs) if ranking.calibration else [], decisions=decisions,
             **({"self_check": ranking.policy.notes["self_check_sample"]}
                if "self_check_sample" in ranking.policy.notes else {}))


def _served_model(embedder: Embedder) -> ModelInfo:
    try:
        manifest = embedder.manifest()
    except Exception as err:  # noqa: BLE001 - only transient server states are "resumable"
        if getattr(err, "status", None) in TRANSIENT_STATUSES:
            raise IndexBuildInterrupted(f"cannot read the served model manifest: {err}", None, 0, 0) from err
        raise
    return ModelInfo.from_manifest(manifest)


def is_rejects_file(path: Path, sample_lines: int = 20) -> bool:
    """A rejects file this job wrote: its first lines are JSON objects with the Reject fields."""
    with open(path, "rb") as f:
        lines = [f.readline(1 << 16) for _ in range(sample_lines)]
    rows = [line for line in lines if line.strip()]
    try:
        parsed = [json.loads(line) for line in rows]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return bool(parsed) and all(isinstance(d, dict) and {"line", "reason", "message"} <= d.keys() for d in parsed)


def _counts(scan: CatalogScan, indexed: int, rejects: list[Reject]) -> dict[str, Any]:
    dropped = [r for r in rejects if not r.kept]
    counts = {
        "rows_read": scan.rows_read,
        "indexed": indexed,
        "rejected": len(dropped),
        "skipped_other_splits": scan.skipped,
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in dropped).items())),
        "photos_skipped_by_reason": dict(sorted(Counter(r.reason for r in rejects if r.kept).items())),
    }
    if indexed + len(dropped) + scan.skipped != scan.rows_read:  # every row is accounted for, or nothing ships
        raise RuntimeError(f"row accounting does not add up: {counts}")
    return counts


def _run_bounded(fn: Callable[[int], EmbeddedChunk], keys: list[int], concurrency: int):
    """Yield fn(k) for every key as results finish, with at most `concurrency` calls in flight.

    On an error the calls not yet started are cancelled; results that finish meanwhile are still
    yielded first (so they get checkpointed), then the error is raised.
    """
    pending = iter(keys)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="index-embed") as pool:
        in_flight: set[Future] = set()
        for k in pending:
            in_flight.add(pool.submit(fn, k))
            if len(in_flight) >= concurrency:
                break
        error: BaseException | None = None
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    error = error or f.exception()
                    continue
                yield f.result()
                if error is None:
                    nxt = next(pending, None)
                    if nxt is not None:
                        in_flight.add(pool.submit(fn, nxt))
        if error is not None:
            raise error


class _Progress:
    """A rich progress bar on stderr when it is a terminal (and enabled); a no-op otherwise."""

    def __init__(self, enabled: bool, total: int, done: int):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.text import Text

            class RowsPerSecond(ProgressColumn):
                def render(self, task) -> Text:  # noqa: ANN001
                    return Text(f"{task.speed:.0f} rows/s" if task.speed else "", style="progress.data.speed")

            self._bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self._task = self._bar.add_task("index", total=total, completed=done)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
