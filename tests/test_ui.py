"""The web UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright's API):
the start page says what there is and how to add more; several files upload at once, each with
its progress and outcome, with metadata (and a password for an encrypted PDF); the documents
table shows ids, dates, metadata and why a document failed, and filters; search picks its
collection from the API, shows each hit's text with the query's words marked, file names that
wrap where they should; a hit's heatmap has a legend and an opacity slider; one query word's
map; no stale error after switching tabs; a favicon; deleting; with API keys set, nothing loads
without the key; Swagger UI renders with no asset from outside. Screenshots of each step go to
``artifacts/ui/`` (README's come from here). Skipped, with the reason, where no Chromium is
installed; ``.ci/run`` installs one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.main import create_app
from retrieval.config import Settings
from tests.documents import make_pdf
from tests.server import serving

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed (apt-get install chromium); .ci/run installs it"
)


def settings_for(tiny_model_dir, data_dir, **overrides) -> Settings:
    values = dict(
        model=str(tiny_model_dir),
        device="cpu",
        max_visual_tokens=64,
        data_dir=data_dir,
        render_workers=1,
        qdrant_url=None,
    )
    return Settings(_env_file=None, **{**values, **overrides})


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def until(page, predicate: str, timeout: float = 30) -> None:
    """Poll a JS expression until it is true. (Playwright's ``wait_for_function`` evaluates
    strings with ``eval``, which the page's CSP rightly forbids; ``evaluate`` is not.)"""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({predicate})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        time.sleep(0.1)


class Watched:
    """A page that records console errors, CSP violations and requests to other origins."""

    def __init__(self, browser, base: str, **context) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.missing: list[str] = []  # URLs answered 404
        self.page.on("response", lambda r: self.missing.append(r.url) if r.status == 404 else None)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "request",
            lambda r: (
                None if r.url.startswith((base, "blob:", "data:")) else self.foreign.append(r.url)
            ),
        )
        self.page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
        )

    def _console(self, message) -> None:
        # A 404 is an answer the UI handles (no collection yet), not an error of the page.
        if message.type == "error" and "status of 404" not in message.text:
            self.errors.append(message.text)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def test_upload_search_heatmap_delete(browser, tiny_model_dir, tmp_path):
    name = "quarterly_report-2024_final.v2-with-a-rather-long-file-name-for-its-card.pdf"
    texts = ["quarterly revenue by region", "an invoice total", "minutes of the meeting"]
    files = {
        name: make_pdf([(595, 842), (842, 595), (612, 792)], texts=texts),
        "memo.pdf": make_pdf([(595, 842)], texts=["a memo about the revenue forecast"]),
        "broken.pdf": b"%PDF-1.7\nthis is not a PDF body",
    }
    for file, data in files.items():
        (tmp_path / file).write_bytes(data)
    settings = settings_for(tiny_model_dir, tmp_path / "data")
    with serving(create_app(settings)) as base:
        ui = Watched(browser, base, viewport={"width": 1280, "height": 860})
        page = ui.page
        response = page.goto(base + "/")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        page.get_by_text("There is nothing to search yet").wait_for()  # and how to add some
        assert "colqwen ingest" in page.locator("#welcome").inner_text()
        ui.shot("00-start")

        # Every file is sent at once: the server holds each upload until all three arrived.
        held = []

        def hold(route) -> None:
            held.append(route)
            if len(held) == len(files):
                for waiting in held:
                    waiting.continue_()

        page.route("**/v1/documents", lambda route: hold(route) if route.request.method == "POST"
                   else route.continue_())  # fmt: skip
        page.get_by_role("button", name="Documents").click()
        page.get_by_label("Metadata for these files (JSON)").fill('{"team": "finance"}')
        page.set_input_files("#files", [str(tmp_path / f) for f in files])
        until(page, "document.querySelectorAll('#uploads li[data-outcome]').length === 3", 90)
        assert len(held) == 3
        outcomes = page.locator("#uploads li").all_inner_texts()
        assert any("indexed (3 pages)" in o for o in outcomes), outcomes
        assert any("indexed (1 page)" in o for o in outcomes), outcomes
        assert any("failed" in o and "broken.pdf" in o for o in outcomes), outcomes
        page.unroute("**/v1/documents")
        until(page, "document.querySelectorAll('#doc-table tbody tr[data-doc]').length === 3")
        table = page.locator("#doc-table").inner_text()
        assert '{"team":"finance"}' in table  # metadata
        assert "failed" in table and "no objects" in table  # why it failed
        first = page.locator("#doc-table tbody tr[data-doc]").first
        doc_id = first.get_attribute("data-doc")
        assert doc_id[:12] in first.inner_text()  # ids as the CLI shows them
        assert first.locator("time").get_attribute("datetime")  # when it was added
        ui.shot("01-uploaded")
        page.get_by_label("Filter documents").fill("memo")
        until(page, "document.querySelectorAll('#doc-table tbody tr[data-doc]').length === 1")
        assert "1 of 3 documents" in page.locator("#doc-count").inner_text()
        ui.shot("01b-filtered")
        page.get_by_label("Filter documents").fill("")

        page.get_by_role("button", name="Search").click()
        options = page.locator("#collections option")
        until(page, "document.querySelectorAll('#collections option').length === 1")
        assert options.first.get_attribute("value") == "pages"  # the picker, from the API
        assert "3 documents (4 pages)" in page.locator("#welcome").inner_text()
        page.get_by_label("Query").fill("quarterly revenue")
        page.get_by_label("Metadata filter (JSON)").fill("{not json")
        page.get_by_label("Metadata filter (JSON)").press("Enter")
        until(page, "document.querySelector('#status').classList.contains('error')")
        page.get_by_role("button", name="Documents").click()
        assert page.locator("#status").inner_text() == ""  # no stale error in another tab
        page.get_by_role("button", name="Search").first.click()
        page.get_by_label("Metadata filter (JSON)").fill("")
        page.get_by_label("Mode").select_option("exact")
        page.keyboard.press("Enter")  # the form submits from the keyboard
        cards = page.locator("#results li")
        cards.nth(3).wait_for()
        assert cards.count() == 4
        until(page, "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
        marks = page.locator("#results mark").all_inner_texts()
        assert {"quarterly", "revenue"} <= {m.lower() for m in marks}, marks
        assert page.locator("#results .name wbr").count() > 5  # a long name wraps at - _ .
        width = page.evaluate("Math.max(...[...document.querySelectorAll('#results li')]"
                              ".map(li => li.scrollWidth - li.clientWidth))")  # fmt: skip
        assert width <= 0  # no card overflows
        ui.shot("02-results")

        cards.first.locator("button").click()
        dialog = page.locator("#viewer")
        dialog.wait_for()
        until(page, "document.querySelector('#page-map').naturalWidth > 0")
        assert page.locator(".legend").is_visible()
        page.locator("#opacity").fill("30")
        until(page, "document.querySelector('#page-map').style.opacity === '0.3'")
        ui.shot("03-heatmap")
        combined = page.locator("#page-map").get_attribute("src")
        tokens = page.locator("#tokens button")
        assert tokens.count() >= 2  # "all query words" and the best ones
        words = tokens.all_inner_texts()[1:]
        assert not [w for w in words if "endoftext" in w or "<" in w], words  # words only
        tokens.nth(1).click()
        until(
            page,
            f"document.querySelector('#page-map').src !== {combined!r} && "
            "document.querySelector('#page-map').naturalWidth > 0",
        )
        assert tokens.nth(1).get_attribute("aria-pressed") == "true"
        ui.shot("04-heatmap-one-token")
        page.keyboard.press("Escape")
        assert not dialog.is_visible()

        page.get_by_role("button", name="Documents").click()
        page.once("dialog", lambda d: d.accept())
        page.get_by_role("button", name=f"Delete {name}").click()
        page.get_by_text(f"Deleted {name}.").wait_for()
        until(page, "document.querySelectorAll('#doc-table tbody tr[data-doc]').length === 2")
        ui.shot("05-deleted")
        assert ui.errors == [] and ui.foreign == [], (ui.errors, ui.foreign)
        assert not [u for u in ui.missing if "favicon" in u], ui.missing

        phone = Watched(browser, base, viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.page.goto(base + "/")
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing wider than a phone's screen
        phone.shot("06-phone")
        phone.close()
        ui.close()


def test_an_encrypted_pdf_uploads_with_its_password(browser, tiny_model_dir, tmp_path):
    from tests.conftest import shared_pdfs

    encrypted = shared_pdfs("bad") / "encrypted-libreoffice.pdf"
    with serving(create_app(settings_for(tiny_model_dir, tmp_path / "data"))) as base:
        ui = Watched(browser, base)
        page = ui.page
        page.goto(base + "/")
        page.get_by_role("button", name="Documents").click()
        page.set_input_files("#files", str(encrypted))
        until(page, "document.querySelector('#uploads li[data-outcome]') !== null", 60)
        assert "password required" in page.locator("#uploads li").last.inner_text()
        page.get_by_label("Password (encrypted PDFs)").fill("openpassword")
        page.set_input_files("#files", str(encrypted))
        until(page, "document.querySelectorAll('#uploads li[data-outcome]').length === 2", 90)
        assert "indexed" in page.locator("#uploads li").last.inner_text()
        ui.shot("09-encrypted")
        ui.close()


def test_nothing_loads_without_the_api_key(browser, tiny_model_dir, tmp_path):
    settings = settings_for(tiny_model_dir, tmp_path / "data", api_keys="s3cret")
    with serving(create_app(settings)) as base:
        ui = Watched(browser, base)
        page = ui.page
        page.goto(base + "/")
        page.get_by_label("API key").wait_for()  # the key field appears
        assert "needs an API key" in page.locator("#status").inner_text()
        page.get_by_role("button", name="Documents").click()
        assert page.locator("#doc-table tbody tr[data-doc]").count() == 0
        ui.shot("07-key-required")
        page.get_by_label("API key").fill("wrong")
        page.get_by_role("button", name="Use").click()
        until(page, "document.querySelector('#status').classList.contains('error')")
        page.get_by_label("API key").fill("s3cret")
        page.get_by_role("button", name="Use").click()
        page.get_by_text("No documents yet").wait_for()  # answered: the key works
        ui.close()


def test_swagger_ui_renders_from_local_assets(browser, tiny_model_dir, tmp_path):
    with serving(create_app(settings_for(tiny_model_dir, tmp_path / "data"))) as base:
        ui = Watched(browser, base)
        ui.page.goto(base + "/docs")
        ui.page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)
        ui.page.get_by_text("/v1/search").first.wait_for()
        ui.shot("08-api-docs")
        assert ui.foreign == [] and not [e for e in ui.errors if "CSP" in e]
        ui.close()
