"""The web demo against a fake search service: a real in-process gRPC server whose servicer records
requests and answers from a four-product table (or with a chosen error status). Covers rendering,
facet parameters -> filters, error mapping, upload checks, image serving (caching headers, path
traversal) and the CLI printing its URL once it listens."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image
from starlette.testclient import TestClient

from hostile_images import tall_png
from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.triton.ports import free_ports
from lenscope.client.web import WebSettings, create_app
from lenscope.client.web.image_store import ImageNotFound, ImageStore, etag_matches

PRODUCTS = [
    {"product_id": "p1", "title": "Red striped dress", "image": "images/catalog/p1.png", "category": "dress", "color": "red"},
    {"product_id": "p2", "title": "Blue dress <script>alert(1)</script>", "image": "images/catalog/p2.png",
     "category": "dress", "color": "blue"},
    {"product_id": "p3", "title": "Red mug", "image": "images/catalog/p3.png", "category": "mug", "color": "red"},
    {"product_id": "p4", "title": "Black boot", "image": "images/catalog/p4.png", "category": "boot", "color": "black"},
]
MODEL_HASH = "e889baa84d93d020"
INDEX_VERSION = "20261125T000000Z-e889baa84d93-abcdef"


def _png(color=(200, 30, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class FakeSearch(search_pb2_grpc.SearchServiceServicer):
    """Filters PRODUCTS like the real service (values OR-ed, facets AND-ed) and counts facets over
    the filtered set; or aborts with ``fail = (code, details)``."""

    def __init__(self) -> None:
        self.requests: list[search_pb2.SearchRequest] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.hold: threading.Event | None = None  # set: a call waits for it before answering
        self.answered = 0

    def Search(self, request, context):  # noqa: N802 - gRPC method name
        self.requests.append(request)
        context.set_trailing_metadata((("x-request-id", "req-fake-1"),))
        if self.hold is not None:
            self.hold.wait(10)
        self.answered += 1
        if self.fail:
            context.abort(*self.fail)
        rows = [p for p in PRODUCTS if all(p.get(f.facet) in f.values for f in request.filters)]
        hits = []
        for i, p in enumerate(rows[: request.top_k or 10]):
            visual = 0.5 - 0.1 * i if request.HasField("image") else None
            breakdown = {"text_image": 0.3 - 0.05 * i, "popularity": 0.05, "bias": 0.01}
            if visual is not None:
                breakdown["visual"] = visual
            hits.append(search_pb2.Hit(
                product_id=p["product_id"], title=p["title"], image=p["image"], score=sum(breakdown.values()),
                breakdown=breakdown, raw={"text_image": 0.21, "visual": 1.0} if visual else {"text_image": 0.21},
                calibrated={"text_image": 0.6}, attributes={"category": p["category"], "color": p["color"]},
                popularity=0.3,
            ))
        facets = []
        for name in ("category", "color"):
            counts: dict[str, int] = {}
            for p in rows:
                counts[p[name]] = counts.get(p[name], 0) + 1
            for f in request.filters:  # selected values always appear
                if f.facet == name:
                    for v in f.values:
                        counts.setdefault(v, 0)
            facets.append(search_pb2.FacetCount(facet=name, values=[
                search_pb2.FacetValueCount(value=v, count=c) for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            ]))
        return search_pb2.SearchResponse(
            hits=hits, facets=facets, model_hash=MODEL_HASH, index_version=INDEX_VERSION, request_id="req-fake-1",
            timings_ms={"total": 9.5, "facets": 0.2, "embed": 7.0, "retrieve": 1.1, "fuse": 0.3, "engine_total": 9.0},
            over_fetch=search_pb2.OverFetch(candidates=len(rows), rounds=1, filled=True),
            ranking=search_pb2.RankingInfo(
                query_type="image+text" if request.HasField("image") and request.text else
                ("image" if request.HasField("image") else "text"),
                ranked_by="text_image", source="self-check", rule="raw-too-few-held-out",
                reason="only 0 held-out queries (< 10), fused not published <b>", raw_signals=["text_image"]),
        )


@pytest.fixture(scope="module")
def fake_server():
    fake = FakeSearch()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    search_pb2_grpc.add_SearchServiceServicer_to_server(fake, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("lenscope.v1.SearchService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture()
def fake(fake_server) -> FakeSearch:
    fake = fake_server[0]
    fake.requests.clear()
    fake.fail = None
    fake.hold = None
    fake.answered = 0
    return fake


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("web")
    root = base / "catalog"
    (root / "images" / "catalog").mkdir(parents=True)
    for i, p in enumerate(PRODUCTS):
        (root / p["image"]).write_bytes(_png((50 * i, 30, 30)))
    (root / "catalog.jsonl").write_text("\n".join(json.dumps(p) for p in PRODUCTS) + "\n")
    (root / "images" / "notes.txt").write_text("not an image")
    (base / "secret.png").write_bytes(b"SECRET-OUTSIDE-THE-CATALOG")
    (root / "images" / "escape.png").symlink_to(base / "secret.png")  # a symlink out of the root
    (root / "images" / "escape_dir").symlink_to(base)  # a directory symlink out of the root
    (root / "images" / "alias.png").symlink_to(root / "images" / "catalog" / "p1.png")  # stays inside
    (root / "images" / "renamed.png").symlink_to(root / "catalog.jsonl")  # inside, but not an image
    (root / "images" / "loop.png").symlink_to(root / "images" / "loop.png")
    return root


def _settings(target: str, root: Path, **kw) -> WebSettings:
    return WebSettings(search_target=target, catalog_root=root, deadline_s=kw.pop("deadline_s", 5.0), **kw)


@pytest.fixture()
def client(fake, fake_server, catalog_root: Path):
    with TestClient(create_app(_settings(fake_server[1], catalog_root))) as c:
        yield c


def _post(client: TestClient, files=None, **fields):
    return client.post("/search", data=fields, files=files)


# --- rendering ---------------------------------------------------------------------------------


def test_empty_page_has_form_and_assets(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'id="search-form"' in html and 'type="file"' in html and 'name="q"' in html
    assert 'data-max-upload="10485760"' in html
    js = re.search(r'src="(/static/app\.js\?v=\w+)"', html).group(1)
    assert client.get(js).status_code == 200
    css = re.search(r'href="(/static/app\.css\?v=\w+)"', html).group(1)
    assert client.get(css).headers["content-type"].startswith("text/css")
    assert 'class="card"' not in html


def test_text_search_renders_cards_breakdown_facets_timings_versions(client: TestClient, fake: FakeSearch) -> None:
    r = client.get("/", params={"q": "red dress"})
    assert r.status_code == 200, r.text
    (req,) = fake.requests
    assert req.text == "red dress" and not req.HasField("image") and req.top_k == 24 and not req.filters
    html = r.text
    assert html.count('class="card"') == 4
    assert 'data-product-id="p1"' in html and "Red striped dress" in html
    assert 'src="/images/images/catalog/p1.png"' in html
    # fused score, per-signal bar segments (hover) and the expandable breakdown table
    assert ">0.360<" in html  # 0.3 + 0.05 + 0.01
    assert 'title="text_image +0.300, raw 0.210, calibrated 0.600"' in html
    assert '<tr data-signal="bias">' in html
    # bias last among the signals of a card, strongest first
    p1 = html[html.index('data-product-id="p1"'): html.index('data-product-id="p2"')]
    assert p1.index('data-signal="text_image"') < p1.index('data-signal="popularity"') < p1.index('data-signal="bias"')
    # facets with counts, unticked
    assert re.search(r'value="color:red"\s*>\s*<span class="value">red</span> <span class="count">2</span>', html)
    assert 'value="color:red" checked' not in html
    # timings in pipeline order, totals last; model and index versions
    stages = re.findall(r'data-stage="(\w+)"', html)
    assert stages == ["embed", "retrieve", "fuse", "facets", "engine_total", "total"]
    assert MODEL_HASH[:12] in html and INDEX_VERSION in html
    assert "request req-fake-1" in html
    # "search with this image" per card
    assert 'data-like="images/catalog/p3.png"' in html
    # how the service ranked the query: the index's decision, its rule and reason (escaped)
    assert 'id="ranking" data-ranked-by="text_image" data-rule="raw-too-few-held-out"' in html
    assert "Ranked by the <b>raw text_image cosine</b> (text query, rule <code>raw-too-few-held-out</code>" in html
    assert "fused not published &lt;b&gt;" in html and "Uncalibrated (raw cosine): text_image" in html


def test_titles_are_escaped(client: TestClient) -> None:
    html = client.get("/", params={"q": "dress"}).text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_facet_parameters_become_filters_and_stay_ticked(client: TestClient, fake: FakeSearch) -> None:
    r = _post(client, q="dress", f=["color:red", "category:dress", "color:blue", "color:red"], k="12")
    assert r.status_code == 200, r.text
    (req,) = fake.requests
    assert [(f.facet, list(f.values)) for f in req.filters] == [("color", ["red", "blue"]), ("category", ["dress"])]
    assert req.top_k == 12
    html = r.text
    assert html.startswith('<div id="results-body"')  # a fragment, not a page
    assert html.count('class="card"') == 2  # p1 (red dress) and p2 (blue dress)
    assert 'value="color:red" checked' in html and 'value="color:blue" checked' in html
    assert 'value="category:dress" checked' in html
    assert 'data-query="q=dress&amp;f=color%3Ared&amp;f=color%3Ablue&amp;f=category%3Adress&amp;k=12"' in html
    # the same search by URL renders the same cards (shareable links)
    page = client.get("/", params=[("q", "dress"), ("f", "color:red"), ("f", "color:blue"), ("f", "category:dress")])
    assert page.text.count('class="card"') == 2


def test_filter_value_with_colon_and_zero_count(client: TestClient, fake: FakeSearch) -> None:
    r = _post(client, q="x", f=["color:navy:dark"])
    assert [(f.facet, list(f.values)) for f in fake.requests[0].filters] == [("color", ["navy:dark"])]
    assert 'class="empty"' in r.text and 'value="color:navy:dark" checked' in r.text


@pytest.mark.parametrize("fields, fragment", [
    ({"q": "x", "f": ["color"]}, "must look like facet:value"),
    ({"q": "x", "k": "many"}, "k must be a number"),
    ({"q": "x", "k": "0"}, "between 1 and 100"),
    ({"q": "   "}, "Type a query, add a photo, or both."),
    ({"like": "images/../catalog.jsonl"}, "no catalog image"),
    ({"like": "images/escape.png"}, "no catalog image"),
])
def test_bad_parameters_are_400_with_a_message(client: TestClient, fake: FakeSearch, fields, fragment) -> None:
    r = _post(client, **fields)
    assert r.status_code == 400
    assert 'role="alert"' in r.text and fragment in r.text
    assert not fake.requests


# --- photos ------------------------------------------------------------------------------------


def test_photo_upload_is_sent_as_image(client: TestClient, fake: FakeSearch) -> None:
    photo = _png((10, 200, 10), (16, 16))
    r = _post(client, files={"image": ("shoe.png", photo, "image/png")}, q="boot")
    assert r.status_code == 200, r.text
    (req,) = fake.requests
    assert req.image == photo and req.text == "boot"
    assert "photo shoe.png" in r.text
    assert 'data-signal="visual"' in r.text


def test_search_with_catalog_image(client: TestClient, fake: FakeSearch, catalog_root: Path) -> None:
    r = _post(client, like="images/catalog/p3.png")
    assert r.status_code == 200, r.text
    (req,) = fake.requests
    assert req.image == (catalog_root / "images/catalog/p3.png").read_bytes() and not req.HasField("text")
    page = client.get("/", params={"like": "images/catalog/p3.png"})
    assert 'id="query-image" class="query-image" alt="query photo"\n           src="/images/images/catalog/p3.png"' in page.text


def test_upload_and_like_together_is_refused(client: TestClient, fake: FakeSearch) -> None:
    r = _post(client, files={"image": ("a.png", _png(), "image/png")}, like="images/catalog/p1.png")
    assert r.status_code == 400 and "not both" in r.text and not fake.requests


def test_not_an_image_is_415(client: TestClient, fake: FakeSearch) -> None:
    r = _post(client, files={"image": ("notes.png", b"just some text, not pixels", "image/png")})
    assert r.status_code == 415
    assert 'data-code="not_an_image"' in r.text
    assert "&#39;notes.png&#39; is not an image" in r.text
    assert not fake.requests
    truncated = _png()[:40]
    assert _post(client, files={"image": ("cut.png", truncated, "image/png")}).status_code == 415


def test_unsupported_image_type_is_415(client: TestClient, fake: FakeSearch) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="ICO")  # decodable by Pillow, not an accepted format
    r = _post(client, files={"image": ("icon.ico", buf.getvalue(), "image/x-icon")})
    assert r.status_code == 415 and "not an image in an accepted format" in r.text and "TIFF" in r.text
    assert not fake.requests


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_every_format_the_readme_names_is_accepted(client: TestClient, fake: FakeSearch, fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=fmt)
    r = _post(client, files={"image": (f"photo.{fmt.lower()}", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 200, r.text
    assert fake.requests[-1].image == buf.getvalue()


def test_aspect_ratio_bomb_is_refused_from_its_header(client: TestClient, fake: FakeSearch) -> None:
    # 1 x 39,000,000 pixels in 76 KB: under the pixel cap, but the short-side resize would need 224 x 8.7e9
    r = _post(client, files={"image": ("strip.png", tall_png(39_000_000), "image/png")})
    assert r.status_code == 413 and 'data-code="extreme_aspect_ratio"' in r.text
    assert "refused before decoding" in r.text and not fake.requests


def test_too_large_upload_is_413(fake, fake_server, catalog_root: Path) -> None:
    settings = _settings(fake_server[1], catalog_root, max_upload_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        big = _png((1, 2, 3), (300, 300)) + b"\0" * 25_000  # a valid PNG header, too many bytes
        r = _post(client, files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413
        assert 'data-code="too_large"' in r.text and "the limit is 19.5 KB" in r.text
        # far over the limit: refused by Content-Length before the body is read
        huge = b"\0" * 200_000
        r = _post(client, files={"image": ("huge.png", huge, "image/png")})
        assert r.status_code == 413 and "Photo too large" in r.text
        # a chunked body (no Content-Length) is cut off while streaming
        def chunks():
            for _ in range(20):
                yield b"\0" * 10_000

        r = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413
    assert not fake.requests


# --- backend errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("code, http_status, fragment", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "unknown facet &#39;colour&#39;"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "The search service is busy"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "The search took too long"),
    (grpc.StatusCode.UNAVAILABLE, 503, "The search service is unavailable"),
    (grpc.StatusCode.FAILED_PRECONDITION, 503, "index was built by another model"),
    (grpc.StatusCode.INTERNAL, 502, "INTERNAL: boom"),
])
def test_service_errors_are_mapped(client: TestClient, fake: FakeSearch, code, http_status, fragment) -> None:
    details = {grpc.StatusCode.INVALID_ARGUMENT: "unknown facet 'colour'",
               grpc.StatusCode.FAILED_PRECONDITION: "the index was built by another model",
               grpc.StatusCode.INTERNAL: "boom"}.get(code, "x")
    fake.fail = (code, details)
    r = _post(client, q="red")
    assert r.status_code == http_status
    assert 'role="alert"' in r.text and fragment in r.text
    assert f'data-code="{code.name}"' in r.text
    assert "request req-fake-1" in r.text  # the id from the trailing metadata, to find the server log
    page = client.get("/", params={"q": "red"})  # the full page shows the same message
    assert page.status_code == http_status and fragment in page.text and 'id="search-form"' in page.text


def test_deadline_is_enforced(fake, fake_server, catalog_root: Path) -> None:
    fake.hold = threading.Event()  # the backend answers only when released, after the page's answer
    try:
        with TestClient(create_app(_settings(fake_server[1], catalog_root, deadline_s=0.2))) as client:
            r = _post(client, q="red")
        assert r.status_code == 504 and "No answer within 0.2 s" in r.text
        assert fake.answered == 0  # answered on the deadline, while the backend still held the call
    finally:
        fake.hold.set()


def test_backend_down_is_503_and_health_says_so(catalog_root: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    with TestClient(create_app(_settings(f"127.0.0.1:{port}", catalog_root))) as client:
        r = _post(client, q="red")
        assert r.status_code == 503
        assert "The search service is unavailable" in r.text and f"127.0.0.1:{port}" in r.text
        body = client.get("/healthz").json()
        assert body["web"] == "SERVING" and body["search"] == "UNAVAILABLE"


def test_healthz_reports_serving(client: TestClient) -> None:
    assert client.get("/healthz").json()["search"] == "SERVING"


# --- catalog images ----------------------------------------------------------------------------


def test_image_served_with_caching_headers(client: TestClient, catalog_root: Path) -> None:
    r = client.get("/images/images/catalog/p1.png")
    assert r.status_code == 200
    assert r.content == (catalog_root / "images/catalog/p1.png").read_bytes()
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{24}"', etag)
    again = client.get("/images/images/catalog/p1.png", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get("/images/images/catalog/p1.png", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert client.get("/images/images/catalog/p1.png", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/images/images/catalog/p2.png").headers["etag"] != etag
    # a symlink that stays inside the root is fine
    assert client.get("/images/images/alias.png").content == r.content


@pytest.mark.parametrize("path", [
    "/images/%2e%2e/secret.png",
    "/images/%2E%2E/%2e%2e/secret.png",
    "/images/images/%2e%2e/%2e%2e/secret.png",
    "/images/..%2fsecret.png",
    "/images/%2e%2e%2fsecret.png",
    "/images/images/catalog/%2e%2e/%2e%2e/%2e%2e/secret.png",
    "/images//etc/passwd",
    "/images/%2Fetc%2Fpasswd",
    "/images/%2F" + "%2F".join(["tmp", "secret.png"]),
    "/images/images/escape.png",  # symlink out of the root
    "/images/images/escape_dir/secret.png",  # through a directory symlink out of the root
    "/images/images/renamed.png",  # symlink onto a non-image inside the root
    "/images/images/loop.png",
    "/images/catalog.jsonl",  # not an image type
    "/images/images/notes.txt",
    "/images/images/catalog",  # a directory
    "/images/images/catalog/missing.png",
    "/images/images%5C..%5C..%5Csecret.png",  # backslashes
    "/images/images/catalog/p1.png%00.png",
    "/images/images//catalog/p1.png",
])
def test_path_traversal_and_non_images_are_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"SECRET" not in r.content and b"root:" not in r.content
    assert "etag" not in r.headers


def test_image_store_refuses_directly(catalog_root: Path) -> None:
    """The same rules without a router in front (which decodes and may normalise paths)."""
    store = ImageStore(catalog_root)
    for path in ["../secret.png", "images/../../secret.png", str(catalog_root.parent / "secret.png"),
                 "images/escape.png", "images/escape_dir/secret.png", "", ".", "images/catalog/",
                 "./images/catalog/p1.png", "images\\..\\..\\secret.png"]:
        with pytest.raises(ImageNotFound):
            store.lookup(path)
    assert store.lookup("images/catalog/p1.png").path == catalog_root / "images/catalog/p1.png"
    assert store.lookup("images/catalog/p1.png").media_type == "image/png"
    assert etag_matches("*", '"a"') and not etag_matches(None, '"a"') and not etag_matches('"b"', '"a"')


# --- the CLI, over real HTTP -------------------------------------------------------------------


def test_cli_prints_url_and_refuses_raw_traversal(fake_server, catalog_root: Path) -> None:
    """``serve_web_command`` in its own process on port 0: prints its URL once listening; raw HTTP
    requests (no client-side normalisation of ``..``) cannot leave the catalog root."""
    code = "import typer; from lenscope.client.cli.web import serve_web_command; typer.run(serve_web_command)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--search-target", fake_server[1], "--catalog", str(catalog_root / "catalog.jsonl"),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "web demo on" in line or not line:
                break
        match = re.search(r"web demo on http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no URL line; got {line!r}"
        port = int(match.group(1))

        def get(path: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return resp.status, body

        assert get("/")[0] == 200
        status, body = get("/images/images/catalog/p1.png")
        assert status == 200 and body == (catalog_root / "images/catalog/p1.png").read_bytes()
        for raw in ["/images/../secret.png", "/images/images/../../secret.png", "/images/%2e%2e/secret.png",
                    "/images/..%2F..%2Fsecret.png", "/images/" + str(catalog_root.parent / "secret.png")]:
            status, body = get(raw)
            assert status == 404 and b"SECRET" not in body, raw
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
