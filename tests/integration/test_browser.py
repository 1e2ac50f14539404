"""The web demo in a real browser against the real stack: headless Chromium (Debian's ``chromium``,
driven by Playwright without a browser download) -> ``lenscope serve web`` (its own process, started
through the CLI function) -> the gRPC search service -> tritonserver, over an index built through
Triton from a generated catalog.

The default model is untrained, so its text ranking is arbitrary. What each test asserts is chosen
to be determined anyway:

- text search: the title of a product P whose (category, colour, pattern) is unique in the catalog,
  then ticking those three facet values in the page: P must be the top (and only) result;
- photo upload / drop / "search with this image" with k >= catalog size: every product is returned,
  so P's own card is there, and its breakdown shows a raw visual cosine of 1.000 (its own image);
- facet toggle: with every product returned, ticking a colour must leave exactly the products of
  that colour, and the category counts must become those of that colour (computed from the catalog);
- invalid uploads: a text file named .png (the server refuses it: 415) and an 11 MiB file (refused in
  the page before uploading).

Screenshots go to the test's tmp directory and are copied to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import CatalogRow
from lenscope.client.search.engine import SearchSettings, open_engine
from lenscope.client.service.server import serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.ports import free_ports
from lenscope.client.triton.server import TritonServer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
N = 40
K = 48  # >= N: every product comes back, so "is P among the results" is determined


# --- the stack (the pattern of tests/integration) ----------------------------------------------


@pytest.fixture(scope="module")
def catalog(make_index) -> Path:
    return make_index(N, 11)[0]


@pytest.fixture(scope="module")
def rows(catalog: Path) -> list[CatalogRow]:
    return list(read_catalog(catalog).rows)


@pytest.fixture(scope="module")
def index_root(make_index) -> Path:
    return make_index(N, 11)[1]


@pytest.fixture(scope="module")
def service(triton: TritonServer, index_root: Path):
    engine = open_engine(triton.grpc_url, str(index_root), SearchSettings(default_deadline_s=10.0), triton_timeout_s=10.0)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    yield engine, f"127.0.0.1:{running.port}"
    running.stop(0.5)
    engine.close()


def _start_web(search_target: str, catalog: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``lenscope serve web`` (through the CLI function) on a free port; returns (process, URL)."""
    code = "import typer; from lenscope.client.cli.web import serve_web_command; typer.run(serve_web_command)"
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--search-target", search_target, "--catalog", str(catalog), "--port", "0",
         "--deadline", "20"],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"web demo on (http://\S+/)", log.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"web demo did not print its URL; output:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        assert proc.wait(timeout=15) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def web(service, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    proc, url = _start_web(service[1], catalog, tmp_path_factory.mktemp("web-log") / "web.log")
    yield url
    _stop(proc)


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run scripts/install-browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, web: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=web)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 4" not in msg.text
            and "status of 5" not in msg.text else None)
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _shoot(page, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = REPO / "artifacts" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, keep / path.name)
    return path


def _searched(page, action) -> str:
    """Run ``action`` and wait until the page has swapped in the answer; returns its status."""
    before = int(page.evaluate("Number(document.body.dataset.searches || 0)"))
    action()
    page.wait_for_function("n => Number(document.body.dataset.searches || 0) > n", arg=before)
    return page.evaluate("document.body.dataset.lastStatus")


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#grid .card",
        "cards => cards.map(c => ({id: c.dataset.productId, attrs: JSON.parse(c.dataset.attrs),"
        " title: c.querySelector('.title').textContent}))",
    )


def _facet_counts(page, facet: str) -> dict[str, int]:
    pairs = page.eval_on_selector_all(
        f'fieldset[data-facet="{facet}"] .facet-value',
        "ls => ls.map(l => [l.querySelector('.value').textContent, Number(l.querySelector('.count').textContent)])",
    )
    return dict(pairs)


def _tick(page, facet: str, value: str) -> str:
    return _searched(page, lambda: page.check(f'.facets input[value="{facet}:{value}"]'))


def _wait_images(page) -> None:
    """Every card's image has loaded (from /images/...) and decoded to real pixels."""
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#grid .card img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }")


def _unique_product(rows: list[CatalogRow]) -> CatalogRow:
    combos = Counter((r.category, r.color, r.pattern) for r in rows)
    return next(r for r in rows if combos[(r.category, r.color, r.pattern)] == 1)


def _visual_raw(page, product_id: str) -> str:
    card = page.locator(f'#grid .card[data-product-id="{product_id}"]')
    return card.locator('tr[data-signal="visual"] td').nth(2).text_content()


# --- tests -------------------------------------------------------------------------------------


def test_text_search_then_facets_narrow_to_the_expected_product(page, rows, service, shots: Path) -> None:
    engine = service[0]
    product = _unique_product(rows)
    page.goto("/")
    _shoot(page, shots, "01-empty")
    page.fill("#q", product.title)
    assert _searched(page, lambda: page.press("#q", "Enter")) == "ok"
    assert len(_cards(page)) > 1
    assert page.text_content("#model-hash") == engine.model_hash[:12]
    assert page.text_content("#index-version") == engine.index_version
    stages = page.eval_on_selector_all("#timings li", "ls => ls.map(l => l.dataset.stage)")
    assert {"embed", "retrieve", "fuse", "facets", "total"} <= set(stages)
    for facet, value in (("category", product.category), ("color", product.color), ("pattern", product.pattern)):
        assert _tick(page, facet, value) == "ok"
        assert page.is_checked(f'.facets input[value="{facet}:{value}"]')
    cards = _cards(page)
    assert [c["id"] for c in cards] == [product.product_id], cards
    assert cards[0]["title"] == product.title
    assert _facet_counts(page, "pattern")[product.pattern] == 1
    assert page.input_value("#q") == product.title
    assert f"f=color%3A{product.color}" in page.url  # the search has a shareable URL
    _wait_images(page)
    top = page.locator("#grid .card").first
    top.locator(".score").hover()
    assert "text_image" in top.locator(".score").get_attribute("title")
    top.locator(".breakdown summary").click()
    signals = top.locator(".breakdown tr[data-signal]").evaluate_all("rs => rs.map(r => r.dataset.signal)")
    assert "text_image" in signals and signals[-1] == "bias"
    _shoot(page, shots, "02-text-search-narrowed-by-facets")
    page.reload()  # the URL alone renders the same result on the server
    assert [c["id"] for c in _cards(page)] == [product.product_id]


def test_toggling_a_facet_changes_results_and_counts(page, rows, shots: Path) -> None:
    page.goto(f"/?k={K}")
    page.fill("#q", "a product")
    assert _searched(page, lambda: page.click("#submit")) == "ok"
    before = _cards(page)
    assert len(before) == N
    categories_before = _facet_counts(page, "category")
    assert categories_before == dict(Counter(r.category for r in rows))
    color = Counter(r.color for r in rows).most_common(1)[0][0]
    want = {r.product_id for r in rows if r.color == color}
    assert _tick(page, "color", color) == "ok"
    after = _cards(page)
    assert {c["id"] for c in after} == want
    assert all(c["attrs"]["color"] == color for c in after)
    categories_after = _facet_counts(page, "category")
    assert categories_after == dict(Counter(r.category for r in rows if r.color == color))
    assert categories_after != categories_before
    assert _facet_counts(page, "color")[color] == len(want)
    _wait_images(page)
    _shoot(page, shots, "03-facet-ticked")
    assert _searched(page, lambda: page.uncheck(f'.facets input[value="color:{color}"]')) == "ok"
    assert {c["id"] for c in _cards(page)} == {c["id"] for c in before}


def test_photo_upload_drop_and_similar(page, rows, catalog: Path, shots: Path) -> None:
    product = rows[7]
    page.goto(f"/?k={K}")
    image = catalog.parent / product.image
    assert _searched(page, lambda: page.set_input_files("#photo", str(image))) == "ok"
    assert len(_cards(page)) == N
    assert page.is_visible("#query-image")
    assert f"photo {image.name}" in page.text_content(".summary")
    assert "The photo looks like" in page.text_content(".query-attrs")
    assert _visual_raw(page, product.product_id) == "1.000"  # its own image: cosine 1
    _wait_images(page)
    _shoot(page, shots, "04-photo-upload")

    # drag and drop the product's user photo (a different rendering of it)
    photo = catalog.parent / product.photo
    data = list(photo.read_bytes())
    assert _searched(page, lambda: page.evaluate(
        """([bytes, name]) => {
             const dt = new DataTransfer();
             dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
             document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
           }""", [data, photo.name])) == "ok"
    assert f"photo {photo.name}" in page.text_content(".summary") and len(_cards(page)) == N

    # "search with this image" on another product's card
    other = rows[3]
    link = page.locator(f'#grid .card[data-product-id="{other.product_id}"] a.similar')
    assert _searched(page, lambda: link.click()) == "ok"
    assert "like=" in page.url and other.image.replace("/", "%2F") in page.url
    assert _visual_raw(page, other.product_id) == "1.000"
    assert page.get_attribute("#query-image", "src").endswith(other.image)
    _shoot(page, shots, "05-search-with-this-image")


def test_invalid_uploads_show_errors(page, shots: Path) -> None:
    page.goto("/")
    status = _searched(page, lambda: page.set_input_files(
        "#photo", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"shopping list: milk, eggs"}]))
    assert status == "error"
    error = page.locator('#results .error[role="alert"]')
    assert error.get_attribute("data-code") == "not_an_image"
    assert "'notes.png' is not an image" in error.text_content()
    assert page.locator("#grid .card").count() == 0
    _shoot(page, shots, "06-not-an-image")
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024)
    status = _searched(page, lambda: page.set_input_files(
        "#photo", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}]))
    assert status == "error"
    assert error.get_attribute("data-code") == "too_large"
    assert "the limit is 10.0 MB" in error.text_content()
    _shoot(page, shots, "07-too-large")


def test_unavailable_backend_shows_a_message(browser, catalog: Path, shots: Path, tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    proc, url = _start_web(f"127.0.0.1:{port}", catalog, tmp_path / "web.log")
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 600}, base_url=url)
        page = context.new_page()
        response = page.goto("/?q=red+dress")
        assert response.status == 503
        error = page.locator('#results .error[role="alert"]')
        assert error.get_attribute("data-code") == "UNAVAILABLE"
        assert f"127.0.0.1:{port}" in error.text_content()
        _shoot(page, shots, "08-backend-unavailable")
        context.close()
        assert "is UNAVAILABLE" in (tmp_path / "web.log").read_text()  # the CLI warned at startup
    finally:
        _stop(proc)


def test_phone_viewport_shows_the_first_product_above_the_fold(browser, web: str, rows, shots: Path) -> None:
    """On a 390x844 phone screen a search's first product card starts within the first screenful."""
    product = _unique_product(rows)
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=web, is_mobile=True,
                                  device_scale_factor=2)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto("/")
        page.fill("#q", product.title)
        assert _searched(page, lambda: page.press("#q", "Enter")) == "ok"
        page.evaluate("window.scrollTo(0, 0)")
        box = page.locator("#grid .card").first.bounding_box()
        _shoot(page, shots, "07-phone-390x844")
        assert box is not None and box["y"] < 844, f"first card starts at y={box and box['y']:.0f} px (fold at 844)"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    finally:
        context.close()
