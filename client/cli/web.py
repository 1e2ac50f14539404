"""``lenscope serve web``: the demo page (:mod:`lenscope.client.web`) on uvicorn, in the foreground.

It binds its socket first (so ``--port 0`` picks a free port), checks the search service's health
once (a warning, not a failure: the page tells its users when the service is down and recovers by
itself when it is back), and prints ``lenscope: web demo on http://HOST:PORT/`` once uvicorn is
accepting connections. SIGTERM / SIGINT stop it gracefully (uvicorn's own handlers).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import typer

from lenscope.client.cli.terminal import echo_plain
from lenscope.client.web.settings import MiB


def _echo(line: str) -> None:
    echo_plain(line + "\n")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {err.strerror}", param_hint="--port") from err
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve_web_command(
    search_target: str = typer.Option(
        "127.0.0.1:50051", "--search-target", envvar="LENSCOPE_SEARCH_TARGET", help="host:port of the gRPC search service."
    ),
    catalog: Path = typer.Option(
        ..., "--catalog", exists=True, resolve_path=True,
        help="Catalog file (or its directory): the images in search results are served from its directory.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address; 0.0.0.0 in a container."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Listen port (0 = any free port)."),
    deadline: float = typer.Option(5.0, "--deadline", min=0.01, help="Deadline of each search, in seconds."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.01, help="Largest photo accepted, in MiB."),
    top_k: int = typer.Option(24, "--top-k", min=1, max=100, help="Default number of results."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level (info logs every request)."),
) -> None:
    """Serve the web demo: photo / text search with facets, scores and timings, in a browser."""
    import uvicorn
    from pydantic import ValidationError

    from lenscope.client.web import WebSettings, create_app

    try:
        settings = WebSettings(search_target=search_target, catalog_root=catalog, deadline_s=deadline,
                               max_upload_bytes=int(max_upload_mb * MiB), top_k=top_k)
    except ValidationError as err:
        raise typer.BadParameter(str(err)) from err
    app = create_app(settings)
    health = app.state.backend.health(timeout_s=2.0)
    if health != "SERVING":
        _echo(f"lenscope: warning: search service at {search_target} is {health}; "
              "the page will say so until it is up")
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info"),
                                           timeout_graceful_shutdown=5))

    # uvicorn handles SIGTERM / SIGINT (graceful shutdown) and then re-raises the signal it caught into
    # the handler that was installed before it: make that one ours, so a clean stop exits 0.
    stopped_by: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: stopped_by.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            _echo(f"lenscope: web demo on {url} (search service {search_target}, images from {settings.catalog_root})")
        await task

    try:
        asyncio.run(run())
    finally:
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not server.started:
        raise typer.Exit(1)
    if stopped_by:
        _echo(f"lenscope: web demo stopped ({signal.Signals(stopped_by[0]).name})")
