"""`lenscope demo`: the whole product on the embedded default, no GPU, no network.

Export the default model (if needed) -> generate the bundled catalog (if needed) -> start the real
tritonserver -> build the index through it -> start the gRPC search service -> run image, text and
mixed queries over gRPC exactly as a frontend would -> print hits, score breakdowns and facets.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.text import Text

from lenscope.client.core import contract
from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.catalog.reader import read_catalog
from lenscope.client.cli.search import render
from lenscope.client.cli.terminal import literal, log_to
from lenscope.client.core.manifest import load_manifest
from lenscope.client.core.modelspec import InputLimits
from lenscope.client.inputs.image_files import read_catalog_image
from lenscope.client.triton.server import start_server

DEMO_PRODUCTS = 600
DEMO_SEED = 0


def ensure_repository(repository: Path, reexport: bool, console: Console) -> None:
    if reexport or not (repository / contract.MANIFEST_FILE).is_file():
        from lenscope.export.pipeline import export_model  # torch only when exporting
        from lenscope.export.repository import check_repository_out

        check_repository_out(repository, "--repository")
        export_model(out=repository, log=log_to(console))


def ensure_catalog(workdir: Path, console: Console) -> Path:
    from lenscope.client.synth.catalog import generate_catalog

    catalog = workdir / "catalog" / "catalog.jsonl"
    if not catalog.is_file():
        console.print(_step("catalog", f"generating {DEMO_PRODUCTS} products (seed {DEMO_SEED}) in {catalog.parent}"))
        catalog = generate_catalog(catalog.parent, DEMO_PRODUCTS, seed=DEMO_SEED).catalog
    return catalog


def _step(name: str, message: str) -> Text:
    """``<name> <message>``: the step name in bold, the message (paths, titles) literal."""
    return Text.assemble((name, "bold"), " ", literal(message))


def demo_queries(catalog: Path) -> list[tuple[str, search_pb2.SearchRequest]]:
    """A photo query (a user photo of a test product), a text query, a mixed one, and a filtered one."""
    rows = read_catalog(catalog).rows
    probe = next(r for r in rows if r.split == "test" and r.photo)
    photo = read_catalog_image(catalog.parent, probe.photo, max_bytes=InputLimits().max_image_bytes)
    text = f"{probe.color} {probe.category}"
    return [
        (f"photo of {probe.product_id} ({probe.title})", search_pb2.SearchRequest(image=photo, top_k=5, explain=True)),
        (f"text {text!r}", search_pb2.SearchRequest(text=text, top_k=5)),
        (f"photo + text {probe.pattern!r}", search_pb2.SearchRequest(image=photo, text=probe.pattern, top_k=5)),
        (f"text 'bag' filtered to color={probe.color}",
         search_pb2.SearchRequest(text="bag", top_k=5, filters=[search_pb2.Filter(facet="color", values=[probe.color])])),
    ]


def serve_web_until(search_target: str, catalog: Path, port: int, seconds: float, console: Console) -> None:
    """The web demo on top of the running service; prints its URL, then serves until Ctrl-C
    (or for `seconds`, when > 0: scripted runs)."""
    import threading

    import uvicorn

    from lenscope.client.web import WebSettings, create_app

    app = create_app(WebSettings(search_target=search_target, catalog_root=catalog))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="web-demo", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        console.print(f"[bold red]web demo could not start on port {port}[/] (in use? pass --web-port)")
        return
    console.print(f"[bold green]web demo: http://127.0.0.1:{port}/[/]  (photo or text search, facets; "
                  + ("Ctrl-C to stop)" if seconds <= 0 else f"stopping in {seconds:.0f} s)"))
    try:
        thread.join(None if seconds <= 0 else seconds)
    except KeyboardInterrupt:
        pass
    server.should_exit = True
    thread.join(10)


def run_demo(repository: Path, reexport: bool = False, console: Console | None = None,
             workdir: Path = Path(".lenscope/demo"), web_port: int | None = None,
             web_seconds: float = 0.0) -> list[search_pb2.SearchResponse]:
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.index.job import IndexBuildConfig, build_index
    from lenscope.client.search.engine import SearchSettings, open_engine
    from lenscope.client.service.server import serve
    from lenscope.client.service.settings import ServiceSettings
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder

    console = console or Console(width=160)
    t0 = time.perf_counter()
    ensure_repository(repository, reexport, console)
    manifest = load_manifest(repository)
    console.print(_step("model", f"{manifest.spec.name} hash {manifest.model_hash} weights={manifest.weights}"))
    catalog = ensure_catalog(workdir, console)
    index_root = workdir / "index"
    log_path = workdir / "tritonserver.log"
    responses = []
    with start_server(repository, log_path=log_path) as server:
        console.print(_step("tritonserver", f"ready: grpc {server.grpc_url}, metrics {server.metrics_url} (log {log_path})"))
        store = BundleStore(index_root)
        current = None
        if store.current_version():
            try:
                current = store.open_current(expected_model_hash=manifest.model_hash)
                current.close()
            except Exception:  # noqa: BLE001 - any unusable index is rebuilt below
                current = None
        if current is None:
            with TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=30.0, max_concurrency=16)) as emb:
                report = build_index(IndexBuildConfig(catalog=catalog, index_root=index_root, progress=False,
                                                      use_shipped_fit=True), emb)
            console.print(_step("index", f"built {report.indexed} products ({report.rejected} rejected) "
                                         f"at {report.rows_per_s:.0f} rows/s -> {report.bundle_path}"))
        engine = open_engine(server.grpc_url, str(index_root), SearchSettings(default_deadline_s=5.0), triton_timeout_s=5.0)
        service_log = open(workdir / "search-service.log", "a", encoding="utf-8")  # JSON lines, kept off the tables
        running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=5.0), log_stream=service_log)
        console.print(_step("search service", f"grpc 127.0.0.1:{running.port}, metrics :{running.metrics_port}, "
                                                f"index {engine.index_version}"))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = search_pb2_grpc.SearchServiceStub(channel)
                for title, request in demo_queries(catalog):
                    console.rule(literal(title, "bold", keep_newlines=False))
                    response = stub.Search(request, timeout=10)
                    render(response, console)
                    responses.append(response)
            if web_port is not None:
                serve_web_until(f"127.0.0.1:{running.port}", catalog, web_port, web_seconds, console)
        finally:
            running.stop(0.5)
            engine.close()
            service_log.close()
    console.print(f"demo done in {time.perf_counter() - t0:.1f} s; try: lenscope serve triton / serve search / search")
    return responses
