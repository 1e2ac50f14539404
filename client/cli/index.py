"""Command functions for `lenscope index build` and `lenscope catalog generate` (mounted by cli.py).

Exit codes of `index build`: 0 published; 2 cannot build (unusable catalog file, options or weights
file, no row accepted, another build of the same catalog running); 3 interrupted with checkpoints
kept (model server unavailable): rerun to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lenscope.client.cli.paths import check_current_link, input_file, published_index, text_file
from lenscope.client.cli.terminal import fail, literal, log_to
from lenscope.client.core.outputs import check_output_dir

console = Console(stderr=True)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq")
CALIBRATION_METHODS = ("platt", "isotonic")
SPLITS = ("train", "val", "test")


def _fail(message: str, code: int = 2) -> None:
    fail(message, code)


# Entries an index root always holds once a build started: a folder without any is the user's.
INDEX_ROOT_MARKERS = ("current", "versions", ".work", "milvus_collections.json")


def _check_milvus_options(uri: Optional[str], alias: str, index_kind: str) -> None:
    """Refuse Milvus options that would only fail after the whole catalog was embedded."""
    if uri is None:
        _fail("--backend milvus needs --milvus-uri (http://host:19530, or a path ending in .db for Milvus Lite)")
    _check_milvus_uri_and_alias(uri, alias)
    if index_kind == "ivfpq":
        _fail("--index-kind ivfpq is a FAISS index; with --backend milvus use auto, flat or hnsw")
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        _fail("--backend milvus needs pymilvus: pip install 'lenscope[milvus]'")


def _make_embedder(url: str, timeout_s: float, concurrency: int, batch_size: int):
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder

    # every input is its own request: allow one chunk's worth of requests per chunk in flight, bounded
    return TritonEmbedder(ClientConfig(url=url, timeout_s=timeout_s, max_concurrency=min(64, concurrency * batch_size)))


def index_build_command(
    catalog: Path = typer.Option(..., callback=text_file, help="Catalog file (.jsonl or .csv); image "
                                 "paths resolve against its directory."),
    index_root: Path = typer.Option(..., help="Bundle root: versions/, current -> the served version."),
    triton: str = typer.Option("127.0.0.1:8001", help="Triton gRPC address (host:port)."),
    index_kind: str = typer.Option("auto", help="auto (flat below 50k rows, else hnsw) | flat | hnsw | ivfpq."),
    batch_size: int = typer.Option(32, min=1, max=4096, help="Rows per chunk (one checkpoint file each)."),
    concurrency: int = typer.Option(4, min=1, max=64, help="Chunks embedded concurrently."),
    timeout: float = typer.Option(30.0, min=0.1, help="Per-request deadline to Triton, seconds."),
    rejects: Optional[Path] = typer.Option(None, help="Rejects file (JSONL). Default: <index-root>/rejects.jsonl."),
    calibration: Optional[Path] = typer.Option(
        None, callback=text_file, help="Calibration JSON to attach instead of fitting one on the catalog's own pairs."),
    shipped_fit: bool = typer.Option(
        True, help="Without --fusion-weights/--calibration: use the pair shipped with the served model's checkpoint."),
    fusion_weights: Optional[Path] = typer.Option(
        None, callback=text_file, help="Fusion weights JSON stored with the index (defaults if absent)."),
    calibration_method: str = typer.Option("platt", help="platt | isotonic."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Index only these splits (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the calibration's unmatched-pair sampling."),
    keep_work: bool = typer.Option(False, help="Keep the embedding checkpoints after publishing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (terminal only)."),
    backend: str = typer.Option("faiss", "--backend", help="faiss (vectors in the bundle) | milvus (a new "
                                "collection per build in --milvus-uri; token from LENSCOPE_MILVUS_TOKEN)."),
    milvus_uri: Optional[str] = typer.Option(None, help="Milvus server (http://host:19530) or Milvus Lite path "
                                             "(*.db) for --backend milvus."),
    milvus_alias: str = typer.Option("lenscope_serving", help="Milvus alias moved to the new collection once "
                                     "the build is published (blue-green)."),
    allow_outside_images: bool = typer.Option(
        False, "--allow-outside-images", help="Also read image paths that are absolute or lead outside the "
        "catalog's folder (refused by default: a catalog must not make the indexer read /etc/shadow)."),
    full: bool = typer.Option(
        False, "--full", help="Embed every row. Default: reuse the served version's vectors of rows whose image, "
        "photo, title and attributes did not change (same model), embed only new and changed rows."),
    refit_fraction: float = typer.Option(
        0.05, min=0.0, max=1.0, help="Incremental builds refit the ranking only when more than this share of rows "
        "was embedded anew or removed; below it the previous fit is kept."),
) -> None:
    """Embed a catalog through Triton and publish a versioned index bundle (resumable: rerun after a crash).

    Into a root that already serves a version of the same model, only new and changed rows are embedded."""
    from pydantic import ValidationError

    from lenscope.client.ranking.calibration import CalibrationError
    from lenscope.client.catalog.rows import CatalogError
    from lenscope.client.index.bundle import BundleError
    from lenscope.client.index.checkpoint import WorkDirBusy
    from lenscope.client.index.job import IndexBuildConfig, IndexBuildInterrupted, build_index
    from lenscope.client.ranking.fusion import WeightsError

    if index_kind not in INDEX_KINDS:
        _fail(f"--index-kind must be one of {list(INDEX_KINDS)}, got {index_kind!r}")
    if calibration_method not in CALIBRATION_METHODS:
        _fail(f"--calibration-method must be one of {list(CALIBRATION_METHODS)}, got {calibration_method!r}")
    if split and (bad := sorted(set(split) - set(SPLITS))):
        _fail(f"--split must be among {list(SPLITS)}, got {bad}")
    if backend not in ("faiss", "milvus"):
        _fail(f"--backend must be faiss or milvus, got {backend!r}")
    if backend == "milvus":
        _check_milvus_options(milvus_uri, milvus_alias, index_kind)
    elif milvus_uri is not None:
        _fail("--milvus-uri needs --backend milvus")
    check_output_dir(index_root, "--index-root", INDEX_ROOT_MARKERS, "an index")
    check_current_link(index_root)
    config = IndexBuildConfig(
        catalog=catalog, index_root=index_root, index_kind=index_kind, batch_size=batch_size,  # type: ignore[arg-type]
        concurrency=concurrency, rejects_path=rejects, fusion_weights=fusion_weights,
        calibration=calibration, use_shipped_fit=shipped_fit,
        calibration_method=calibration_method, splits=tuple(split) if split else None,  # type: ignore[arg-type]
        seed=seed, progress=progress, keep_work=keep_work, allow_outside_images=allow_outside_images,
        full=full, refit_fraction=refit_fraction,
        vector_backend=backend, milvus_uri=milvus_uri, milvus_alias=milvus_alias,  # type: ignore[arg-type]
    )
    embedder = _make_embedder(triton, timeout, concurrency, batch_size)
    try:
        report = build_index(config, embedder)
    except IndexBuildInterrupted as err:
        _fail(str(err), 3)
    except (CatalogError, WeightsError, CalibrationError, ValidationError, ValueError, WorkDirBusy, BundleError) as err:
        _fail(str(err))
    finally:
        embedder.close()
    _print_report(report)


def _print_report(report) -> None:  # noqa: ANN001
    table = Table(title=f"index {report.bundle_id}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model", report.model_hash)
    build = report.info.get("build") or {}
    if build.get("mode") == "incremental":
        table.add_row("build", f"incremental from {build['previous']}")
        table.add_row("reused / embedded / removed",
                      f"{build['reused']} / {build['embedded']} / {build['removed']}")
        if "files_hashed" in build:
            table.add_row("image files read / known unchanged", f"{build['files_hashed']} / {build['files_known']}")
        table.add_row("ranking", literal(build["ranking"]))
    else:
        table.add_row("build", literal(f"full ({build.get('reason', '')})"))
    table.add_row("rows read", str(report.rows_read))
    table.add_row("indexed", str(report.indexed))
    table.add_row("rejected", str(report.rejected))
    for reason, n in report.rejected_by_reason.items():
        table.add_row(f"  {reason}", str(n))
    for reason, n in report.photos_skipped_by_reason.items():  # the product is indexed; see the rejects file
        table.add_row(f"photo skipped: {reason}" if reason.startswith("photo_") else f"kept, reported: {reason}",
                      str(n))
    if report.skipped_other_splits:
        table.add_row("other splits (not indexed)", str(report.skipped_other_splits))
    table.add_row("chunks resumed / embedded", f"{report.chunks_resumed} / {report.chunks_embedded}")
    table.add_row("rows/s (embedding)", f"{report.rows_per_s:.1f}")
    table.add_row("seconds (read/previous/keys/embed/fit/write/total)",
                  " / ".join(f"{report.seconds.get(k, 0):.1f}"
                             for k in ("read", "previous", "row_keys", "embed", "ranking_fit", "write", "total")))
    table.add_row("rejects file", literal(report.rejects_path))
    Console().print(table)


def catalog_generate_command(
    out: Path = typer.Option(Path("data/catalog"), help="Output directory (catalog.jsonl, queries.jsonl, images/)."),
    n_products: int = typer.Option(6000, min=1, help="Number of products."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same catalog, byte for byte."),
    image_size: int = typer.Option(64, min=16, max=1024, help="Image side in pixels."),
    image_format: str = typer.Option("png", help="png | jpeg."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Generate the procedural product catalog (images, user photos, titles, queries)."""
    from lenscope.client.synth.catalog import generate_catalog

    if image_format not in ("png", "jpeg"):
        _fail(f"--image-format must be png or jpeg, got {image_format!r}")
    check_output_dir(out, "--out", ("manifest.json",), "a catalog")
    paths = generate_catalog(out, n_products, seed=seed, image_size=image_size, image_format=image_format,
                             progress=progress and console.is_terminal)
    log_to(Console())(f"wrote {n_products} products to {paths.catalog} (queries: {paths.queries}) "
                      f"in {paths.seconds:.1f}s")


def index_inspect_command(
    index_root: Path = typer.Option(..., exists=True, file_okay=False, help="Bundle root given to `index build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Show the served index bundle: rows, facets, model, and the ranking fit decision with its numbers."""
    import json
    from collections import Counter

    from lenscope.client.index.bundle import BundleError
    from lenscope.client.index.bundle_store import BundleStore

    published_index(index_root)
    try:
        bundle = BundleStore(index_root).open_current(expected_model_hash=None, fallback=False)
    except (BundleError, FileNotFoundError, OSError) as err:
        _fail(f"cannot open the index under {index_root}: {err}")
    with bundle:
        info = json.loads(bundle.read_attachment("index_info.json") or b"{}")
        policy = json.loads(bundle.read_attachment("ranking_policy.json") or b"null")
        ids = bundle.metadata.row_ids().tolist()
        names = sorted(bundle.metadata.attribute_names())
        values = bundle.metadata.attribute_values(ids, names)
        facets = {f: dict(Counter(v for vals in values[f] for v in vals).most_common()) for f in names}
        summary = {"bundle": bundle.version, "model_hash": bundle.model_manifest_hash, "rows": len(ids),
                   "counts": info.get("counts"), "facets": facets, "ranking": info.get("ranking"), "policy": policy}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    _print_inspect(summary)


def _print_inspect(s: dict) -> None:
    out = Console(highlight=False)
    head = Table(title=literal(f"index {s['bundle']}"), show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("model", literal(s["model_hash"]))
    head.add_row("rows", str(s["rows"]))
    ranking = s.get("ranking") or {}
    head.add_row("catalog fingerprint", literal(ranking.get("catalog_fingerprint", "-")))
    head.add_row("ranking fit", literal(ranking.get("source", "- (built before the self-checked fit)")))
    if ranking.get("shipped_fit"):
        head.add_row("shipped fit", literal(f"not applied: {ranking['shipped_fit']['reason']}"))
    if ranking.get("note"):
        head.add_row("note", literal(ranking["note"]))
    for facet, counts in s["facets"].items():  # facet names and values come from the catalog: literal
        head.add_row(literal(f"facet {facet}", keep_newlines=False),
                     literal(", ".join(f"{v} ({n})" for v, n in list(counts.items())[:12])
                             + (" ..." if len(counts) > 12 else ""), keep_newlines=False))
    out.print(head)
    policy = s.get("policy")
    if not policy:
        out.print("no ranking policy stored: every query type is fused (index built before the held-out check)")
        return
    table = Table(title=f"ranking per query type ({policy['metric']})")
    for col in ("query type", "ranked by", "held-out queries", "held-out nDCG@10 / R@10",
                "all pseudo-queries: raw nDCG@10 / R@10", "why"):
        table.add_column(col)
    for qtype, d in policy["decisions"].items():
        scores = "; ".join(f"{k} {v['ndcg10']:.3f} / {v['r10']:.3f}" for k, v in d["held_out"].items())
        pooled = "; ".join(f"{k} {v['ndcg10']:.3f} / {v['r10']:.3f}" for k, v in d.get("pooled", {}).items())
        table.add_row(qtype, d["ranked_by"], str(d["n_queries"]), scores or "-",
                      f"{d.get('n_pooled', 0)} queries: {pooled}" if pooled else "-", literal(d["reason"]))
    out.print(table)
    if (policy.get("notes") or {}).get("self_check_sample"):  # what the held-out check was made on
        out.print(literal(f"self-check: {policy['notes']['self_check_sample']}"))
    for qtype, d in policy["decisions"].items():  # one line each, so a rule name is never wrapped
        out.print(f"{qtype}: ranked by {d['ranked_by']}, rule {d.get('rule') or '- (policy written before rules)'}")
        if d.get("weights"):  # the type's own fused weights: which signals it leans on
            w = d["weights"]
            out.print(f"  {qtype} weights: " + ", ".join(f"{k} {v:.3g}" for k, v in w.items()
                                                       if k not in ("schema_version", "bias") and v > 0))
    by_kind = (ranking.get("self_check") or {}).get("raw_by_kind")
    if by_kind:  # what the decision was made on: each pseudo-query kind's raw-signal scores
        kinds = Table(title="pseudo-queries by kind (fit + held-out part): raw nDCG@10 / R@10")
        kinds.add_column("kind")
        kinds.add_column("raw signals")
        for kind, scores in by_kind.items():
            kinds.add_row(kind, "; ".join(f"{k} {v['ndcg10']:.3f} / {v['r10']:.3f}" for k, v in scores.items()))
        out.print(kinds)


def index_remove_command(
    index_root: Path = typer.Option(..., exists=True, file_okay=False, help="Bundle root given to `index build`."),
    ids: Path = typer.Option(..., "--ids", callback=text_file,
                             help="Product ids to withdraw, one per line ('#' starts a comment)."),
    milvus_uri: Optional[str] = typer.Option(None, help="Milvus version: reach its Milvus at this address (default: "
                                             "as recorded). Token: LENSCOPE_MILVUS_TOKEN."),
    milvus_alias: str = typer.Option("lenscope_serving", help="Milvus version: the alias moved to the new "
                                     "collection once it is published."),
) -> None:
    """Publish the served index without some products, in seconds, with no model server (a running
    `serve search` switches to it by itself). A Milvus version gets a new collection behind the alias."""
    from lenscope.client.index.bundle import BundleError
    from lenscope.client.index.removal import RemovalError, remove_products

    check_current_link(index_root)
    _check_milvus_uri_and_alias(milvus_uri, milvus_alias)
    try:
        report = remove_products(index_root, ids, milvus_uri=milvus_uri, milvus_alias=milvus_alias)
    except (RemovalError, BundleError) as err:
        _fail(str(err))
    except ConnectionError as err:  # the version's Milvus is unreachable (MilvusConnectionError names it)
        _fail(f"cannot reach the Milvus of the served version: {err}")
    log_to(Console())(f"published {report.bundle_id}: removed {report.removed} product(s) from {report.previous}, "
                      f"{report.remaining} remain ({report.seconds['total']:.2f}s)")


def index_prune_command(
    index_root: Path = typer.Option(..., exists=True, file_okay=False, help="Bundle root given to `index build`."),
    milvus_uri: Optional[str] = typer.Option(None, help="Reach the Milvus the collections were built in at this "
                                             "address (default: as recorded). Token: LENSCOPE_MILVUS_TOKEN."),
    milvus_alias: str = typer.Option("lenscope_serving", help="The alias `index build` moves; its collection is kept."),
    min_age: float = typer.Option(600.0, min=0.0, help="Keep collections younger than this many seconds "
                                  "(a build may still be writing one)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be dropped."),
) -> None:
    """Drop Milvus collections of old index versions: those no published version under INDEX_ROOT uses
    and the alias does not point at. FAISS versions are collected by `index build` itself."""
    import os

    from lenscope.client.index.bundle import BundleError
    from lenscope.client.index.milvus_versions import prune

    try:
        report = prune(index_root, alias=milvus_alias, uri=milvus_uri, token=os.environ.get("LENSCOPE_MILVUS_TOKEN"),
                       min_age_s=min_age, dry_run=dry_run)
    except BundleError as err:
        _fail(str(err))
    out = log_to(Console())
    verb = "would drop" if dry_run else "dropped"
    for name in report.dropped:
        out(f"{verb} {name}")
    for name, why in report.kept.items():
        out(f"kept {name}: {why}")
    if not report.dropped and not report.kept:
        out(f"no Milvus collections recorded under {index_root}")


def _check_milvus_uri_and_alias(uri: str | None, alias: str) -> None:
    """--milvus-uri (when given) and --milvus-alias, refused before any work with the option and value named."""
    import re

    from pydantic import ValidationError

    from lenscope.client.vectors.milvus_config import COLLECTION_NAME_PATTERN, MilvusIndexConfig

    if uri is not None:
        try:
            MilvusIndexConfig(uri=uri)
        except ValidationError as err:
            _fail(f"--milvus-uri {uri!r}: {err.errors()[0]['msg'].removeprefix('Value error, ')}")
    if not re.fullmatch(COLLECTION_NAME_PATTERN, alias):
        _fail(f"--milvus-alias {alias!r} must match {COLLECTION_NAME_PATTERN}")

