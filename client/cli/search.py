"""``lenscope search``: query a running search service over gRPC and print the hits as a table.

A thin client of the public API (``lenscope.client.api``), exactly what a frontend would send, so it
doubles as a smoke test of a deployment. Exit codes: 0 hits printed, 1 the service answered with an
error (its status and message are printed), 2 bad command-line input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import grpc
import typer
from google.protobuf.json_format import MessageToJson
from rich.console import Console
from rich.table import Table

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.core.modelspec import InputLimits
from lenscope.client.inputs.image_files import ImageFileError, read_image_file
from lenscope.client.search.models import ordered_timings

REQUEST_ID_KEY = "x-request-id"
# Protobuf maps arrive unordered: print stages in pipeline order, unknown ones after, totals last.

console = Console()


def parse_filters(exprs: list[str]) -> list[search_pb2.Filter]:
    """``["color=red,burgundy", "category=dress"]`` -> Filter messages (the service checks the names)."""
    filters = []
    for expr in exprs:
        facet, sep, rhs = expr.partition("=")
        values = [v.strip() for v in rhs.split(",")]
        if not sep or not facet.strip() or not all(values):
            raise typer.BadParameter(f"{expr!r} must look like facet=value[,value...]", param_hint="--filter")
        filters.append(search_pb2.Filter(facet=facet.strip(), values=values))
    return filters


def channel_credentials(ca: Path | None, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS file is given (cert + key = client certificate for mutual TLS)."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def render(response: search_pb2.SearchResponse, out: Console) -> None:
    """Hits with one column per score signal, then facets, timings and versions."""
    weight: dict[str, float] = {}
    for hit in response.hits:
        for name, value in hit.breakdown.items():
            weight[name] = weight.get(name, 0.0) + abs(value)
    # Strongest signals first, the bias last.
    signals = sorted(weight, key=lambda name: (name == "bias", -weight[name], name))
    table = Table(title=f"{len(response.hits)} hits", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("product")
    table.add_column("title", overflow="fold")
    table.add_column("score", justify="right")
    for name in signals:
        table.add_column(name, justify="right", style="dim")
    for rank, hit in enumerate(response.hits, 1):
        table.add_row(
            str(rank), hit.product_id, hit.title, f"{hit.score:.4f}",
            *(f"{hit.breakdown[s]:+.4f}" if s in hit.breakdown else "" for s in signals),
        )
    out.print(table)

    for facet in response.facets:
        counts = ", ".join(f"{fv.value} ({fv.count})" for fv in facet.values) or "(none)"
        out.print(f"[bold]{facet.facet}[/]: {counts}")
    for attr, probs in sorted(response.query_attributes.items()):
        top = sorted(probs.probabilities.items(), key=lambda kv: -kv[1])[:3]
        out.print(f"[bold]query {attr}[/]: " + ", ".join(f"{label} {p:.2f}" for label, p in top))
    parts = [f"[bold]{s} {ms:.1f}[/]" if s == "total" else f"{s} {ms:.1f}"
             for s, ms in ordered_timings(dict(response.timings_ms))]
    out.print("timings (ms): " + " | ".join(parts))
    of = response.over_fetch
    out.print(
        f"[dim]model {response.model_hash[:12]} | index {response.index_version} | "
        f"candidates {of.candidates} in {of.rounds} round(s){'' if of.filled else ', top_k not filled'}"
        f"{' (bound reached)' if of.hit_bound else ''} | request {response.request_id}[/]"
    )


def search_command(
    image: Optional[Path] = typer.Option(
        None, "--image", exists=True, dir_okay=False, readable=True, help="Query photo (JPEG/PNG/...)."
    ),
    text: Optional[str] = typer.Option(None, "--text", help="Query text."),
    filters: Optional[list[str]] = typer.Option(
        None, "--filter", help="facet=value[,value...] (values OR-ed, filters AND-ed); repeatable."
    ),
    facets: Optional[list[str]] = typer.Option(None, "--facet", help="Facet to count (default: all); repeatable."),
    top_k: int = typer.Option(10, "--top-k", help="Number of hits."),
    target: str = typer.Option(
        "127.0.0.1:50051", "--target", envvar="LENSCOPE_SEARCH_TARGET", help="host:port of the service."
    ),
    timeout: float = typer.Option(2.0, "--timeout", min=0.001, help="Deadline in seconds."),
    explain: bool = typer.Option(False, "--explain", help="Also show the attributes predicted for the query image."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw response as JSON instead of tables."),
    tls_ca: Optional[Path] = typer.Option(
        None, "--tls-ca", exists=True, dir_okay=False, help="CA of the server certificate (enables TLS)."
    ),
    tls_cert: Optional[Path] = typer.Option(
        None, "--tls-cert", exists=True, dir_okay=False, help="Client certificate (mutual TLS)."
    ),
    tls_key: Optional[Path] = typer.Option(
        None, "--tls-key", exists=True, dir_okay=False, help="Client key (mutual TLS)."
    ),
) -> None:
    """Search the catalog by image, text or both; print ranked hits with their score breakdown."""
    if image is None and not (text and text.strip()):
        raise typer.BadParameter("give --image, --text or both", param_hint="--image/--text")
    request = search_pb2.SearchRequest(
        filters=parse_filters(filters or []), facets=facets or [], top_k=top_k, explain=explain
    )
    if image is not None:
        try:  # the shared bounded reader: a FIFO or /dev/zero cannot hang or exhaust the command
            request.image = read_image_file(image, max_bytes=InputLimits().max_image_bytes)
        except ImageFileError as err:
            raise typer.BadParameter(str(err), param_hint="--image") from None
    if text is not None:
        request.text = text

    credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        try:
            response = stub.Search(request, timeout=timeout)
        except grpc.RpcError as err:
            request_id = dict(err.trailing_metadata() or ()).get(REQUEST_ID_KEY)
            console.print(f"[bold red]error:[/] {err.code().name}: {err.details()}")
            if request_id:
                console.print(f"[dim]request {request_id}[/]")
            raise typer.Exit(1) from None
    if as_json:
        console.print_json(MessageToJson(response, preserving_proto_field_name=True))
    else:
        render(response, console)
