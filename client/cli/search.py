"""``lenscope search``: query a running search service over gRPC and print the hits as a table.

A thin client of the public API (``lenscope.client.api``), exactly what a frontend would send, so it
doubles as a smoke test of a deployment. Exit codes: 0 hits printed, 1 the service answered with an
error (its status and message are printed), 2 bad input (refused here, or INVALID_ARGUMENT from the
service) or no service at ``--target``.
Everything the service returns (titles, ids, facet values) is printed literally, control characters
escaped (:mod:`lenscope.client.cli.terminal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import grpc
import typer
from google.protobuf.json_format import MessageToJson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.cli.paths import input_file
from lenscope.client.cli.terminal import escape_controls, fail, literal
from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.image_files import ImageFileError, read_image_file
from lenscope.client.inputs.preprocess import ImageInputError, check_header
from lenscope.client.search.models import ordered_timings

REQUEST_ID_KEY = "x-request-id"
# Protobuf maps arrive unordered: print stages in pipeline order, unknown ones after, totals last.

console = Console(highlight=False)
# The largest photo read from --image: the service refuses anything bigger (ServiceSettings.max_image_bytes).
MAX_IMAGE_FILE_BYTES = 10 * 1024 * 1024


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
        table.add_column(literal(name, keep_newlines=False), justify="right", style="dim")
    for rank, hit in enumerate(response.hits, 1):
        table.add_row(
            str(rank), literal(hit.product_id, keep_newlines=False), literal(hit.title, keep_newlines=False),
            f"{hit.score:.4f}",
            *(f"{hit.breakdown[s]:+.4f}" if s in hit.breakdown else "" for s in signals),
        )
    out.print(table)

    for facet in response.facets:
        counts = ", ".join(f"{fv.value} ({fv.count})" for fv in facet.values) or "(none)"
        out.print(Text.assemble(literal(facet.facet, "bold", keep_newlines=False), ": ",
                                literal(counts, keep_newlines=False)))
    for attr, probs in sorted(response.query_attributes.items()):
        top = sorted(probs.probabilities.items(), key=lambda kv: -kv[1])[:3]
        out.print(Text.assemble(literal(f"query {attr}", "bold", keep_newlines=False), ": ",
                                literal(", ".join(f"{label} {p:.2f}" for label, p in top), keep_newlines=False)))
    line = ranking_line(response)
    if line:
        out.print(literal(line, keep_newlines=False))
    timings = Text("timings (ms): ")
    for i, (stage, ms) in enumerate(ordered_timings(dict(response.timings_ms))):
        timings.append(" | " if i else "")
        timings.append_text(literal(f"{stage} {ms:.1f}", "bold" if stage == "total" else None, keep_newlines=False))
    out.print(timings)
    of = response.over_fetch
    out.print(literal(
        f"model {response.model_hash[:12]} | index {response.index_version} | "
        f"candidates {of.candidates} in {of.rounds} round(s){'' if of.filled else ', top_k not filled'}"
        f"{' (bound reached)' if of.hit_bound else ''} | request {response.request_id}", "dim", keep_newlines=False))


def ranking_line(response: search_pb2.SearchResponse) -> str | None:
    """One line saying how this query was ranked and why (the index build's decision for its query
    type), e.g. ``ranked by: raw text_image cosine (image+text query; rule raw-too-few-held-out): ...``;
    None for a server older than the do-no-harm rule (no ``ranking`` field)."""
    if not response.HasField("ranking"):
        return None
    r = response.ranking
    how = "fused ranking" if r.ranked_by == "fused" else f"raw {r.ranked_by} cosine"
    rule = f"; rule {r.rule}" if r.rule else ""
    raw = f"; uncalibrated (raw cosine): {', '.join(r.raw_signals)}" if r.raw_signals else ""
    return f"ranked by: {how} ({r.query_type} query, {r.source or 'unknown source'}{rule}){raw}: {r.reason}"


def read_photo(path: Path) -> bytes:
    """The query photo through the shared bounded reader (a FIFO or /dev/zero would never end)."""
    try:
        data = read_image_file(path, max_bytes=MAX_IMAGE_FILE_BYTES)
    except ImageFileError as err:
        raise typer.BadParameter(escape_controls(str(err)), param_hint="--image") from None
    if not data:
        raise typer.BadParameter(f"{escape_controls(str(path))} is empty", param_hint="--image")
    try:  # the model server's own header check (as the web page's): a 1 x 39,000,000 PNG never leaves here
        check_header(data, InputLimits(max_image_bytes=MAX_IMAGE_FILE_BYTES), PreprocessConfig())
    except ImageInputError as err:
        raise typer.BadParameter(f"{escape_controls(str(path))}: {escape_controls(str(err))}",
                                 param_hint="--image") from None
    return data


def search_command(
    image: Optional[Path] = typer.Option(
        None, "--image", callback=input_file, help="Query photo (JPEG/PNG/...)."
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
        None, "--tls-ca", callback=input_file, help="CA of the server certificate (enables TLS)."
    ),
    tls_cert: Optional[Path] = typer.Option(
        None, "--tls-cert", callback=input_file, help="Client certificate (mutual TLS)."
    ),
    tls_key: Optional[Path] = typer.Option(
        None, "--tls-key", callback=input_file, help="Client key (mutual TLS)."
    ),
) -> None:
    """Search the catalog by image, text or both; print ranked hits with their score breakdown."""
    if image is None and not (text and text.strip()):
        raise typer.BadParameter("give --image, --text or both", param_hint="--image/--text")
    request = search_pb2.SearchRequest(
        filters=parse_filters(filters or []), facets=facets or [], top_k=top_k, explain=explain
    )
    if image is not None:
        request.image = read_photo(image)
    if text is not None:
        request.text = text

    credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        try:
            response = stub.Search(request, timeout=timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                fail(f"no search service answers at {target}: {err.details()}", 2,
                     "start one with 'lenscope serve search --index-root DIR' or pass --target HOST:PORT")
            request_id = dict(err.trailing_metadata() or ()).get(REQUEST_ID_KEY)
            message = f"{err.code().name}: {err.details()}" + (f" (request {request_id})" if request_id else "")
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:  # the query itself cannot be used: bad input
                fail(message, 2, "the service refused this query; change the option its message names")
            fail(message, 1)
    if as_json:
        # JSON escapes control characters itself; print it as plain text so no markup is read
        console.print(literal(MessageToJson(response, preserving_proto_field_name=True)), soft_wrap=True)
    else:
        render(response, console)
