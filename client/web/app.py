"""The web demo's routes (Starlette).

``GET /``              the page; with ``q`` / ``like`` / ``f`` / ``k`` it also runs that search and
                       renders the results, so every search without an uploaded photo has a URL
``POST /search``       multipart form (the same fields plus ``image``) -> the results fragment the
                       page's script swaps in; errors come back as a message fragment with a 4xx/5xx
``GET /images/{path}`` catalog images (see :mod:`.image_store`)
``GET /healthz``       this app and the search service's health, as JSON
``/static``            the stylesheet and the script
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lenscope.client.web.backend import SearchBackend, SearchFailure
from lenscope.client.web.image_store import ImageNotFound, ImageStore, etag_matches, url_path
from lenscope.client.web.query import PageQuery, check_upload, parse_query, too_large
from lenscope.client.web.results import Results, present
from lenscope.client.web.settings import WebSettings

HERE = Path(__file__).parent
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields around the photo
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _static_version() -> str:
    """A short hash of the static files: changes the asset URLs whenever they change."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted((HERE / "static").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


class _BodyTooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length up front or while
    streaming (a chunked upload without a length), so a huge upload is never buffered or spooled."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_too_large):
        self.app = app
        self.max_bytes = max_bytes
        self.on_too_large = on_too_large  # (scope, size) -> Response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.on_too_large(scope, int(length))(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(seen)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as err:
            if started:
                raise
            await self.on_too_large(scope, err.size)(scope, receive, send)


def create_app(settings: WebSettings, backend: SearchBackend | None = None) -> Starlette:
    """The web app; ``backend`` defaults to a gRPC client of ``settings.search_target``."""
    backend = backend or SearchBackend(settings.search_target, settings.deadline_s)
    store = ImageStore(settings.catalog_root, max_read_bytes=settings.max_upload_bytes)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(image_url=url_path, settings=settings, static_version=_static_version())

    def page_headers() -> dict[str, str]:
        return {"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

    def render(request: Request, name: str, status: int, **context) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status, headers=page_headers())

    async def run_search(query: PageQuery, upload: bytes | None) -> Results:
        image = upload
        if query.like:
            if upload is not None:
                raise SearchFailure(400, "Invalid search", "Send either a photo or a catalog image, not both.",
                                    "bad_request")
            try:
                image = await run_in_threadpool(store.read, query.like)
            except ImageNotFound:
                raise SearchFailure(400, "Invalid search", f"There is no catalog image {query.like!r}.",
                                    "bad_request") from None
        if not query.has_input:
            raise SearchFailure(400, "Nothing to search for", "Type a query, add a photo, or both.", "empty")
        response = await run_in_threadpool(backend.search, query.to_request(image))
        return present(response, query)

    async def index(request: Request) -> Response:
        params = request.query_params
        query, results, failure = PageQuery(top_k=settings.top_k), None, None
        try:
            query = parse_query(params.get("q"), params.get("like"), params.getlist("f"), params.get("k"), settings)
            if query.has_input:
                results = await run_search(query, None)
        except SearchFailure as err:
            failure = err
        status = failure.http_status if failure else 200
        return render(request, "index.html", status, query=query, results=results, failure=failure)

    async def search(request: Request) -> Response:
        query, results, failure = PageQuery(top_k=settings.top_k), None, None
        try:
            form = await request.form(max_files=1, max_fields=200, max_part_size=64 * 1024)
            upload, name = None, ""
            field = form.get("image")
            if isinstance(field, UploadFile) and (field.filename or field.size):
                data = await field.read(settings.max_upload_bytes + 1)
                name = field.filename or "photo"
                upload = check_upload(data, name, settings, size=field.size)
            text, like, k = (form.get(key) for key in ("q", "like", "k"))
            query = parse_query(text if isinstance(text, str) else None, like if isinstance(like, str) else None,
                                [f for f in form.getlist("f") if isinstance(f, str)],
                                k if isinstance(k, str) else None, settings, upload_name=name)
            results = await run_search(query, upload)
        except SearchFailure as err:
            failure = err
        status = failure.http_status if failure else 200
        return render(request, "_results.html", status, query=query, results=results, failure=failure)

    async def image(request: Request) -> Response:
        try:
            found = store.lookup(request.path_params["path"])
        except ImageNotFound:
            return PlainTextResponse("not found", status_code=404, headers={"Cache-Control": "no-store"})
        headers = {
            "ETag": found.etag,
            "Cache-Control": f"public, max-age={settings.image_max_age_s}",
            "X-Content-Type-Options": "nosniff",
        }
        if etag_matches(request.headers.get("if-none-match"), found.etag):
            return Response(status_code=304, headers=headers)
        return FileResponse(found.path, media_type=found.media_type, headers=headers)

    async def healthz(request: Request) -> Response:
        search_status = await run_in_threadpool(backend.health)
        return JSONResponse({"web": "SERVING", "search": search_status, "search_target": settings.search_target},
                            headers={"Cache-Control": "no-store"})

    def too_large_response(scope: Scope, size: int) -> ASGIApp:
        failure = too_large(size, settings)
        request = Request(scope)
        return render(request, "_results.html", failure.http_status, query=PageQuery(top_k=settings.top_k),
                      results=None, failure=failure)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            backend.close()

    app = Starlette(
        middleware=[Middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD,
                               on_too_large=too_large_response)],
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/search", search, methods=["POST"]),
            Route("/images/{path:path}", image, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.backend = backend
    return app
