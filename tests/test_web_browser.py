"""The search page in a real headless Chromium, against a real `clipsearch serve` process.

Needs Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`) and Playwright's
Python package (`pip install playwright`; its own browser download is not needed). The
module is skipped, saying why, when either is missing.

Screenshots are kept: under pytest's temporary folder, and in $CLIPSEARCH_SCREENSHOT_DIR
(default /tmp/clipsearch-artifacts/), e.g. web-search.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from clipsearch.defaults import DUPLICATE_THRESHOLD

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright: pip install playwright")
expect = sync_api.expect

TIMEOUT_MS = 15_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def library(demo_library, demo_images, tmp_path_factory) -> Path:
    """A copy of ``demo_library`` (which must stay read-only) whose red and blue images carry
    a manual tag of their colour, so that the tag views have something to show."""
    from clipsearch import Library

    root = tmp_path_factory.mktemp("web") / "library"
    # Not a query socket that a server of demo_library in an earlier test left behind.
    shutil.copytree(demo_library, root, ignore=shutil.ignore_patterns("query.sock"))
    with Library.open(root) as lib:
        for path in demo_images:
            colour = path.name.split("_")[0]
            if colour in ("red", "blue"):
                lib.add_tag(path, colour)
    return root


@pytest.fixture(scope="module")
def server(library):
    """A real `clipsearch serve` process on a free loopback port; yields its base URL."""
    from conftest import serving

    with serving(library) as base:
        warmed(base)
        yield base + "/"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def eval_server(demo_images, tmp_path_factory):
    """A `clipsearch serve` process on a library of its own, whose indexed folder holds the
    demo images sorted twice into labelled folders: ``colours/red/...`` and ``shapes/circle/...``
    (the other tests' library must keep its 48 images). Yields its base URL and that folder."""
    from clipsearch import Library
    from conftest import serving

    root = tmp_path_factory.mktemp("eval")
    photos = root / "photos"
    for path in demo_images:
        colour, shape = path.name.split("_")[:2]
        for folder in (photos / "colours" / colour, photos / "shapes" / shape):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    with Library.open(root / "library", model="demo") as lib:
        report = lib.index([photos])
    assert report.added == 2 * len(demo_images) and not report.errors
    with serving(root / "library") as base:
        warmed(base)
        yield base + "/", photos


@contextlib.contextmanager
def checked_context(browser, server: str):
    """A fresh browser context that fails the test on a script error or on any request that
    leaves ``server`` (the page must need no CDN and no network)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(server):
            r.continue_()
        else:
            problems.append(f"request outside the server: {url}")
            r.abort()

    context.route("**/*", route)
    context.on("page", lambda page: watch(page, problems))
    try:
        yield context
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def context(browser, server):
    with checked_context(browser, server) as context:
        yield context


def watch(page, problems: list[str]) -> None:
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and not _expected_console_error(msg.text)
            and problems.append(f"console error: {msg.text}"))


def _expected_console_error(text: str) -> bool:
    # Chromium logs every 4xx response; the tests provoke some on purpose.
    return "Failed to load resource" in text


@pytest.fixture
def page(context):
    return context.new_page()


def tiles(page):
    return page.locator("#grid .tile")


def wait_for_results(page, at_least: int = 1) -> None:
    """Waits until the grid has finished loading (it keeps the last results, dimmed, while
    the next arrive) and holds ``at_least`` results."""
    page.wait_for_function(
        "n => document.querySelector('#grid').getAttribute('aria-busy') !== 'true'"
        " && document.querySelectorAll('#grid .tile').length >= n", arg=at_least)


def wait_for_thumbnails(page, at_least: int) -> int:
    """Waits until ``at_least`` grid thumbnails have decoded; returns how many have."""
    page.wait_for_function(
        "n => [...document.querySelectorAll('#grid img')].filter(i => i.complete && i.naturalWidth > 0).length >= n",
        arg=at_least)
    return page.evaluate("[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth > 0).length")


def first_name(page) -> str:
    return tiles(page).first.locator(".name").inner_text()


def params(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def save_screenshot(page, name: str, tmp_path_factory, full_page: bool = False) -> list[Path]:
    """Writes the screenshot under pytest's temporary folder and into the artifact folder."""
    folders = [tmp_path_factory.getbasetemp() / "screenshots",
               Path(os.environ.get("CLIPSEARCH_SCREENSHOT_DIR") or "/tmp/clipsearch-artifacts")]
    data = page.screenshot(full_page=full_page)
    paths = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def warmed(base: str) -> None:
    """Returns once the server's model is loaded (it loads in the background at start; a
    text query waits for it), so that no test's first request pays for it."""
    with urllib.request.urlopen(base + "/api/search?q=warm+up", timeout=120) as response:
        assert response.status == 200


def post_json(server: str, path: str, body: dict) -> dict:
    """What the API answers ``body`` with, asked directly (the servers here need no token)."""
    request = urllib.request.Request(server + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def album_of(server: str, name: str) -> dict:
    """The first page of an album, asked of the API directly."""
    with urllib.request.urlopen(f"{server}api/albums/{urllib.parse.quote(name)}", timeout=60) as response:
        return json.load(response)


def job_result(server: str, path: str, body: dict, timeout_s: float = 300) -> dict:
    """The result of the background job that posting ``body`` to ``path`` starts."""
    job = post_json(server, path, body)
    deadline = time.monotonic() + timeout_s
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.1)
        with urllib.request.urlopen(f"{server}api/jobs/{job['id']}", timeout=60) as response:
            job = json.load(response)
    assert job["state"] == "done", job
    return job["result"]


def drop_file(page, data: bytes, name: str, kind: str) -> None:
    """Drops a file on the page the way a browser does: dragenter, dragover, drop."""
    page.evaluate(
        """([b64, name, kind]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: kind }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""",
        [base64.b64encode(data).decode(), name, kind])


# -- the tests --------------------------------------------------------------------------


def test_results_appear_while_typing(page, server):
    page.goto(server)
    expect(page.locator(".empty h1")).to_contain_text("Search 48 images")
    page.locator("#q").press_sequentially("a red circle", delay=15)
    wait_for_results(page, 6)
    assert wait_for_thumbnails(page, 6) >= 6
    assert "red" in first_name(page)
    assert re.fullmatch(r"\d\.\d{3}", tiles(page).first.locator(".score").inner_text())
    # Only the last words typed are searched, and they are in the URL.
    assert params(page)["q"] == ["a red circle"]
    expect(page.locator("#context")).to_contain_text("images")


def test_infinite_scroll_loads_every_page(page, server):
    page.goto(server + "?q=a+shape")
    wait_for_results(page, 30)
    page.locator("#sentinel").scroll_into_view_if_needed()
    wait_for_results(page, 48)
    expect(page.locator("#end-note")).to_contain_text("48 images")
    ids = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)")
    assert len(ids) == len(set(ids)) == 48


def test_detail_view_and_similar_images(page, server, demo_images):
    page.goto(server + "?q=a+blue+square")
    wait_for_results(page, 3)
    first = tiles(page).first
    first_id = first.get_attribute("data-id")
    name = first_name(page)
    first.click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(name)
    expect(page.locator("#detail-content .path")).to_have_text(str(demo_images[0].parent / name))
    page.wait_for_function("document.querySelector('#detail-img').naturalWidth > 0")
    assert params(page)["open"] == [first_id]
    assert page.locator("#detail-original").get_attribute("href") == f"/api/images/{first_id}/file"

    # The right arrow moves to the next result, Escape closes and the URL forgets it.
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail-title")).to_have_text(tiles(page).nth(1).locator(".name").inner_text())
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#detail-title")).to_have_text(name)

    page.get_by_role("button", name="Similar images").click()
    expect(dialog).to_be_hidden()
    page.wait_for_function("new URLSearchParams(location.search).get('view') === 'similar'")
    assert params(page)["id"] == [first_id]
    expect(page.locator("#context")).to_contain_text(f"similar to {name}", ignore_case=True)
    wait_for_results(page, 5)
    assert wait_for_thumbnails(page, 5) >= 5
    ids = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)")
    assert first_id not in ids  # the image itself is left out
    assert "blue" in first_name(page) or "square" in first_name(page)

    # Back returns to the search with its detail view open, as it was.
    page.go_back()
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(name)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.wait_for_function("!new URLSearchParams(location.search).has('open')")
    assert params(page)["q"] == ["a blue square"]


def test_keyboard(page, server):
    page.goto(server)
    page.keyboard.press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("a yellow triangle")
    wait_for_results(page, 8)
    page.keyboard.press("ArrowDown")
    expect(tiles(page).first).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(tiles(page).nth(1)).to_be_focused()
    columns = page.evaluate("getComputedStyle(document.querySelector('#grid')).gridTemplateColumns.split(' ').length")
    page.keyboard.press("ArrowDown")
    expect(tiles(page).nth(1 + columns)).to_be_focused()
    name = tiles(page).nth(1 + columns).locator(".name").inner_text()
    page.keyboard.press("Enter")
    expect(page.locator("#detail-title")).to_have_text(name)
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(tiles(page).nth(1 + columns)).to_be_focused()


def test_dropping_an_image_searches_by_it(page, server, demo_images):
    image = demo_images[9]
    page.goto(server)
    expect(page.locator(".empty h1")).to_be_visible()
    drop_file(page, image.read_bytes(), image.name, "image/png")
    expect(page.locator("#drop-overlay")).to_be_hidden()
    wait_for_results(page, 5)
    assert first_name(page) == image.name
    assert float(tiles(page).first.get_attribute("data-score")) > 0.999
    expect(page.locator("#query-chip")).to_be_visible()
    expect(page.locator("#query-chip-label")).to_have_text(image.name)
    assert "upload" in params(page)
    # The upload is kept in the tab, so a reload searches with it again.
    page.reload()
    wait_for_results(page, 5)
    assert first_name(page) == image.name
    # Pasting an image (Ctrl/Cmd+V) searches by it too.
    other = demo_images[20]
    page.evaluate(
        """([b64, name]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
        }""",
        [base64.b64encode(other.read_bytes()).decode(), other.name])
    expect(page.locator("#query-chip-label")).to_have_text(other.name)
    wait_for_results(page, 5)
    assert first_name(page) == other.name


def test_search_with_this_image(page, server):
    page.goto(server + "?q=an+orange+triangle")
    wait_for_results(page, 3)
    source = tiles(page).first
    source_id, name = source.get_attribute("data-id"), first_name(page)
    source.click()
    page.get_by_role("button", name="Search with this image").click()
    expect(page.locator("#detail")).to_be_hidden()
    page.wait_for_function("new URLSearchParams(location.search).has('image')")
    assert params(page)["image"] == [source_id] and "q" not in params(page)
    expect(page.locator("#query-chip-label")).to_have_text(name)
    wait_for_results(page, 5)
    ids = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.id)")
    assert source_id not in ids  # a library image used as the query is left out
    assert "orange" in first_name(page) or "triangle" in first_name(page)
    # Words typed now refine the image query; the chip's x drops the image.
    page.locator("#q").fill("red")
    page.wait_for_function("new URLSearchParams(location.search).get('q') === 'red'")
    assert params(page)["image"] == [source_id]
    page.locator("#query-chip-clear").click()
    expect(page.locator("#query-chip")).to_be_hidden()
    page.wait_for_function("!new URLSearchParams(location.search).has('image')")
    wait_for_results(page, 3)
    assert "red" in first_name(page)


def test_failed_uploads_show_the_servers_message(page, server):
    page.goto(server)
    drop_file(page, b"this is not an image", "notes.txt", "text/plain")
    expect(page.locator("#message .error-box")).to_contain_text("cannot use the uploaded file as an image")
    expect(tiles(page)).to_have_count(0)
    # Over the server's 20 MB default: refused with 413 before it is parsed.
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(21 * 2 ** 20)], "huge.jpg", { type: "image/jpeg" }));
        document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""")
    expect(page.locator("#message .error-box")).to_contain_text("the request body is over 20.0 MB")
    expect(page.locator("#query-chip-label")).to_have_text("huge.jpg")


def test_url_restores_the_search_filters_and_view(page, context, server, demo_images):
    folder = str(demo_images[0].parent)
    page.goto(server)
    page.locator("#q").fill("a green star")
    wait_for_results(page, 3)
    page.locator("#filter-toggle").click()
    expect(page.locator("#filters")).to_be_visible()
    page.locator("#f-in").fill(folder)
    page.locator("#f-in").press("Enter")
    page.wait_for_function("new URLSearchParams(location.search).has('in')")
    wait_for_results(page, 3)
    expect(page.locator("#filter-count")).to_have_text("1")
    name = first_name(page)
    tiles(page).first.click()
    expect(page.locator("#detail")).to_be_visible()

    shared = context.new_page()
    shared.goto(page.url)
    expect(shared.locator("#q")).to_have_value("a green star")
    expect(shared.locator("#f-in")).to_have_value(folder)
    wait_for_results(shared, 3)
    assert first_name(shared) == name
    expect(shared.locator("#detail")).to_be_visible()
    expect(shared.locator("#detail-title")).to_have_text(name)
    expect(shared.locator("#detail-content .path")).to_contain_text(folder)

    # A folder with nothing in it: an empty state that offers to clear the filters.
    shared.locator("#detail-close").click()
    shared.locator("#f-in").fill(folder + "/nowhere")
    shared.locator("#f-in").press("Enter")
    expect(shared.locator("#message")).to_contain_text("No images match")
    shared.get_by_role("button", name="Clear filters").first.click()
    wait_for_results(shared, 3)
    assert "in" not in params(shared)
    shared.go_back()
    expect(shared.locator("#f-in")).to_have_value(folder + "/nowhere")


def test_api_errors_are_shown_with_their_hint(page, server):
    page.goto(server + "?q=red&after=2020-01-01&image=99999")
    expect(page.locator("#message .error-box")).to_contain_text("99999")


def test_tag_browser_and_tag_filters(page, server):
    page.goto(server)
    page.get_by_role("link", name="Tags", exact=True).click()
    expect(page.locator("#tags-view")).to_be_visible()
    assert params(page)["view"] == ["tags"]
    expect(page.locator(".tag-card")).to_have_count(2)
    expect(page.locator('.tag-card[data-tag="red"]')).to_contain_text("6")
    page.locator('.tag-card[data-tag="red"]').click()

    # The tag filters the search; with no words of its own, the search takes the tag's.
    wait_for_results(page, 6)
    assert params(page)["tag"] == ["red"] and params(page)["q"] == ["red"]
    expect(page.locator("#q")).to_have_value("red")
    names = page.eval_on_selector_all("#grid .tile .name", "els => els.map(e => e.textContent)")
    assert len(names) == 6 and all(n.startswith("red_") for n in names)
    expect(page.locator("#context")).to_contain_text("tag: red")
    page.locator("#filter-toggle").click()
    expect(page.locator("#filter-toggle")).to_have_attribute("aria-expanded", "true")
    expect(page.locator('#tag-chips [data-tag="red"]')).to_have_attribute("aria-pressed", "true")

    # Every tag chosen is required: red and blue together match nothing.
    page.locator('#tag-chips [data-tag="blue"]').click()
    expect(page.locator("#message")).to_contain_text("No images match")
    assert params(page)["tag"] == ["red", "blue"]
    page.locator('#tag-chips [data-tag="red"]').click()
    wait_for_results(page, 6)
    names = page.eval_on_selector_all("#grid .tile .name", "els => els.map(e => e.textContent)")
    assert len(names) == 6 and all(n.startswith("blue_") for n in names)

    # The detail view lists the image's tags; one click filters by it.
    tiles(page).first.click()
    expect(page.locator("#detail-content .chip")).to_contain_text("blue")


def test_duplicates_view(page, server):
    page.goto(server + "?q=a+circle")
    page.get_by_role("link", name="Duplicates", exact=True).click()
    expect(page.locator("#dups-view")).to_be_visible()
    assert params(page)["view"] == ["duplicates"]
    # The demo images are all different pictures: no group at the default threshold, nor
    # at 0.9, where pictures of one colour and shape are candidates but their pixels differ.
    expect(page.locator("#dups-list")).to_contain_text("No near-duplicates")
    expect(page.locator("#dups-threshold-value")).to_have_text(f"{DUPLICATE_THRESHOLD:.3f}")  # the server's default
    page.locator("#dups-crops").uncheck()
    page.locator("#dups-threshold").fill("0.9")
    expect(page.locator("#dups-threshold-value")).to_have_text("0.900")
    page.wait_for_function("location.search.includes('threshold=0.9') && location.search.includes('crops=0')")
    expect(page.locator("#dups-list")).to_contain_text("No near-duplicates")
    page.get_by_role("link", name="Search", exact=True).click()
    wait_for_results(page, 3)
    expect(page.locator("#q")).to_have_value("a circle")


def test_duplicates_view_shows_each_group_with_its_images(browser, eval_server):
    base, _ = eval_server  # every demo picture in it twice, byte for byte
    with checked_context(browser, base) as context:
        page = context.new_page()
        page.goto(base + "?view=duplicates")
        expect(page.locator(".dup-group").first).to_be_visible()
        assert page.locator(".dup-group").count() == 48
        assert page.locator(".dup-group").first.locator(".tile").count() == 2
        expect(page.locator(".dup-group h2").first).to_contain_text("similarity 1.0")


def test_screenshot(page, server, tmp_path_factory):
    page.goto(server + "?q=a+red+circle")
    wait_for_results(page, 12)
    visible = page.evaluate("""[...document.querySelectorAll('#grid img')]
        .filter(i => i.getBoundingClientRect().top < innerHeight).length""")
    wait_for_thumbnails(page, visible)
    page.wait_for_timeout(300)  # the thumbnails' fade-in
    paths = save_screenshot(page, "web-search.png", tmp_path_factory)
    assert all(p.stat().st_size > 10_000 for p in paths)
    tiles(page).nth(2).click()
    page.wait_for_function("document.querySelector('#detail-img').naturalWidth > 0")
    page.wait_for_timeout(200)
    save_screenshot(page, "web-detail.png", tmp_path_factory)


def test_label_matrix_from_a_search(page, server, tmp_path_factory):
    page.goto(server + "?q=a+red+circle")
    wait_for_results(page, 12)
    ids = page.eval_on_selector_all("#grid .tile", "els => els.slice(0, 12).map(e => Number(e.dataset.id))")
    page.get_by_role("link", name="Label matrix").click()
    expect(page.locator("#matrix-view")).to_be_visible()
    assert params(page)["view"] == ["matrix"] and params(page)["q"] == ["a red circle"]
    assert params(page)["ids"] == [",".join(map(str, ids))]
    # No label set yet: the view asks for one (the placeholder is only a hint).
    expect(page.locator("#matrix-result")).to_contain_text("Choose a label set")
    page.locator("#matrix-view").get_by_label("Label set").fill("demo-colours")
    page.keyboard.press("Enter")
    table = page.locator("#matrix-result table")
    expect(table).to_be_visible()
    assert params(page)["labels"] == ["demo-colours"]

    # Images across (in the search's order), the set's labels down, the API's numbers inside.
    api = post_json(server, "api/matrix", {"images": ids, "labels": "demo-colours"})
    expect(table.locator("thead th[scope=col]")).to_have_count(12)
    assert [int(i) for i in table.locator("thead th[scope=col]").evaluate_all("ths => ths.map(t => t.dataset.id)")] == ids
    assert table.locator("tbody th[scope=row]").all_inner_texts() == api["labels"] == [
        "red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    cells = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => [td.textContent, Number(td.dataset.value)]))")
    assert [len(row) for row in cells] == [12] * 8
    for j, row in enumerate(cells):
        for i, (text, value) in enumerate(row):
            assert value == api["cosine"][i][j]
            assert re.fullmatch(r"-?\d\.\d\d", text) and abs(float(text) - value) <= 0.005 + 1e-9
    # Each image's best label is marked: the greatest in its column.
    best = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.classList.contains('best')))")
    for i, column in enumerate(api["cosine"]):
        assert [row[i] for row in best] == [j == column.index(max(column)) for j in range(len(column))]

    page.wait_for_function("[...document.querySelectorAll('#matrix-result thead img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.locator("#matrix-labels").blur()
    save_screenshot(page, "web-matrix.png", tmp_path_factory)

    # The URL keeps the images and the label set; a header opens its image.
    page.reload()
    expect(table.locator("tbody tr")).to_have_count(8)
    expect(page.locator("#matrix-labels")).to_have_value("demo-colours")
    table.locator("thead th a").first.click()
    expect(page.locator("#detail-title")).to_have_text(api["images"][0]["name"])
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    page.get_by_role("link", name="Back to search").click()
    wait_for_results(page, 12)
    expect(page.locator("#q")).to_have_value("a red circle")


def test_eval_view_on_a_labelled_folder(browser, eval_server, tmp_path_factory):
    base, photos = eval_server
    with checked_context(browser, base) as context:
        page = context.new_page()
        page.goto(base)
        page.get_by_role("link", name="Evaluate", exact=True).click()
        view = page.locator("#eval-view")
        expect(view).to_be_visible()
        assert params(page)["view"] == ["eval"]
        expect(page.locator("#eval-folder")).to_have_attribute("placeholder", str(photos))

        colours = str(photos / "colours")
        view.get_by_label("Labelled folder").fill(colours)
        view.get_by_label("Label set").fill("demo-colours")
        view.get_by_role("button", name="Run").click()
        top1 = page.locator("#eval-top1")
        expect(top1).to_be_visible()
        api = job_result(base, "api/eval", {"folder": colours, "labels": "demo-colours"})
        assert float(top1.get_attribute("data-value")) == api["top1"]
        expect(top1).to_have_text(f"{100 * api['top1']:.1f}%")
        rows = page.locator(".confusion tbody tr")
        expect(rows).to_have_count(len(api["labels"]))
        assert len(api["labels"]) == 8 and rows.locator("th[scope=row]").all_inner_texts() == api["labels"]
        assert page.locator(".confusion thead th[scope=col]").all_inner_texts() == api["labels"]
        counts = rows.evaluate_all("rows => rows.map(r => [...r.querySelectorAll('td')].map(td => Number(td.textContent)))")
        assert counts == api["confusion"]
        assert params(page)["folder"] == [colours] and params(page)["labels"] == ["demo-colours"]

        # Shapes, with the templates compared and few-shot probes: slower, busy meanwhile.
        shapes = str(photos / "shapes")
        view.get_by_label("Labelled folder").fill(shapes)
        view.get_by_label("Label set").fill("demo-shapes")
        view.get_by_label("Compare templates").check()
        view.get_by_label("Few-shot K").fill("4")
        view.get_by_label("Few-shot K").press("Enter")
        expect(page.locator("#eval-run")).to_be_disabled()
        expect(page.locator("#eval-result")).to_have_attribute("aria-busy", "true")
        # A background job: the page follows it, saying how far it is, with a way to stop it.
        expect(page.locator("#eval-result [role=status]")).to_contain_text("Evaluating")
        expect(page.locator("#eval-result").get_by_role("button", name="Cancel")).to_be_visible()
        expect(page.locator("#eval-result .stats")).to_be_visible(timeout=120_000)
        expect(page.locator("#eval-run")).to_be_enabled()
        assert params(page)["compare"] == ["1"] and params(page)["shots"] == ["4"]
        api = job_result(base, "api/eval", {"folder": shapes, "labels": "demo-shapes", "compare_templates": True,
                                           "few_shot": 4})
        assert float(top1.get_attribute("data-value")) == api["top1"]
        expect(rows).to_have_count(6)
        labels = page.locator(".card").filter(has=page.get_by_role("heading", name="Per label"))
        expect(labels.locator("tbody tr")).to_have_count(len(api["classes"]))
        misses = page.locator(".misses li")
        expect(misses).to_have_count(len(api["misses"]))
        assert api["misses"] and all(m["thumbnail"] for m in api["misses"])  # indexed images, with thumbnails
        first = api["misses"][0]
        expect(misses.first).to_contain_text(f"{first['true']} → {first['predicted']}")
        page.wait_for_function("[...document.querySelectorAll('.misses img')].every(i => i.complete && i.naturalWidth > 0)")
        templates = page.locator(".card").filter(has=page.get_by_role("heading", name="Templates"))
        expect(templates.locator("tbody tr")).to_have_count(len(api["templates"]))
        shots = page.locator(".card").filter(has=page.get_by_role("heading", name="Few-shot probes"))
        expect(shots.locator("tbody tr")).to_have_count(len(api["few_shot"]))
        beat = api["shots_to_beat_zero_shot"]
        expect(page.locator("#eval-verdict")).to_contain_text(
            f"from {beat} shot" if beat else "No probe beat zero-shot")
        view.get_by_label("Few-shot K").blur()
        save_screenshot(page, "web-eval.png", tmp_path_factory, full_page=True)

        # Cancelling stops the server's job (nobody else joined it) and says so.
        view.get_by_label("Few-shot K").fill("8")
        view.get_by_label("Few-shot K").press("Enter")
        page.locator("#eval-result").get_by_role("button", name="Cancel").click()
        expect(page.locator("#eval-result")).to_contain_text("Cancelled")
        expect(page.locator("#eval-run")).to_be_enabled()
        deadline = time.monotonic() + 30
        while True:  # the page's DELETE is on its way
            with urllib.request.urlopen(base + "api/jobs", timeout=60) as response:
                latest = [j for j in json.load(response) if j["kind"] == "eval"][-1]
            if latest["state"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert latest["params"]["few_shot"] == 8 and latest["state"] == "cancelled"

        # A folder outside the indexed ones: the server's error, with its hint.
        view.get_by_label("Labelled folder").fill(str(photos.parent))
        view.get_by_role("button", name="Run").click()
        expect(page.locator("#eval-result .error-box")).to_contain_text("outside the indexed folders")
        expect(page.locator("#eval-result .error-box .hint")).to_contain_text("clipsearch index")


def test_albums_save_a_search_browse_pin_and_remove(page, server, tmp_path_factory):
    page.goto(server + "?q=a+red+circle")
    wait_for_results(page, 6)
    page.get_by_role("button", name="Save as album").click()
    page.get_by_label("Album name").fill("red things")
    # The context line is drawn again as each page of results arrives: the open form, what
    # was typed in it and its focus outlive that.
    page.evaluate("import('/static/search.js').then((m) => m.renderContext())")
    expect(page.get_by_label("Album name")).to_have_value("red things")
    expect(page.get_by_label("Album name")).to_be_focused()
    expect(page.get_by_role("button", name="Save as album")).to_be_hidden()
    page.get_by_role("button", name="Save", exact=True).click()
    # The saved album opens: the same images as the search, with its search above them.
    expect(page.locator("#context")).to_contain_text("red things")
    expect(page.locator("#context")).to_contain_text("'a red circle'")
    assert params(page)["view"] == ["album"] and params(page)["album"] == ["red things"]
    wait_for_results(page, 6)
    members = album_of(server, "red things")["members"]
    first = first_name(page)
    assert "red" in first and members == 48  # every image, as a search of at most 100 gives

    # Removed for good: gone from the album, and still gone after a reload.
    page.get_by_role("button", name=f"Remove {first} from the album").click()
    expect(page.locator(f"#grid .tile[aria-label^='{first},']")).to_have_count(0)
    page.reload()
    wait_for_results(page, 1)
    expect(page.locator("#context")).to_contain_text(f"{members - 1} images")
    expect(page.locator(f"#grid .tile[aria-label^='{first},']")).to_have_count(0)

    # Pinned: marked, and kept by the server.
    second = first_name(page)
    page.get_by_role("button", name=f"Pin {second}").click()
    expect(page.get_by_role("button", name=f"Unpin {second}")).to_have_attribute("aria-pressed", "true")
    album = album_of(server, "red things")
    assert len(album["pinned"]) == 1 and len(album["removed"]) == 1
    assert [m["name"] for m in album["results"] if m["pinned"]] == [second]
    save_screenshot(page, "web-album.png", tmp_path_factory)

    # The albums view lists it; its card opens it again.
    page.get_by_role("link", name="Albums", exact=True).click()
    card = page.locator(".album-card[data-album='red things']")
    expect(card).to_contain_text(str(members - 1))
    expect(card).to_contain_text("1 pinned, 1 removed")
    card.click()
    wait_for_results(page, 1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete album").click()
    expect(page.locator("#message h2")).to_have_text("No albums yet")
